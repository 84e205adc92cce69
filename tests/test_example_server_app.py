"""The server-side web app example (examples/server-app: Starlette + Authlib, a
confidential client) signing in several people, each with their own Keyfob account:
each visitor's calls run on their own grant and are metered to them; sign-out revokes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from keyfob.accounts.passwords import hash_password
from keyfob.settings import Settings
from keyfob.store import Store
from tests.browser import post_form
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli, free_port, ledger_rows, wait_http

APP = Path(__file__).resolve().parent.parent / "examples" / "server-app" / "app.py"
PEOPLE = {"alice": "alice's long passphrase", "bob": "bob's long passphrase"}


async def _add_people(data_dir: Path, fakellm_url: str) -> None:
    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        for name, password in PEOPLE.items():
            user = await store.users.create(name, hash_password(password))
            await store.providers.add(
                user_id=user.id,
                name="fake",
                kind="openai_compatible",
                base_url=fakellm_url,
                credential_envelope=None,
                is_local=True,
                models=["gpt-4o-mini"],
            )
    finally:
        await store.close()


def visit(app_url: str, username: str, password: str) -> requests.Session:
    """A visitor: opens the app, signs in on Keyfob as ``username``, consents."""
    browser = requests.Session()
    login = browser.get(app_url + "/login", timeout=30)  # -> Keyfob's login page
    assert "/login" in login.url and login.url != app_url + "/login", login.url
    consent = post_form(
        browser, login, fill={"user": username, "pass": password}, allow_redirects=True
    )
    assert "Chat server" in consent.text
    assert 'name="cap_usd" value="0.5"' in consent.text  # the app's suggestion, pre-filled
    home = post_form(browser, consent, button="approve", allow_redirects=True)
    assert home.url == app_url + "/" and "Signed in" in home.text, home.text[:500]
    return browser


def ask(browser: requests.Session, app_url: str, prompt: str) -> str:
    home = browser.get(app_url + "/", timeout=30)
    answer = post_form(browser, home, fill={"prompt": prompt}, allow_redirects=True)
    assert answer.status_code == 200, answer.text[:500]
    return answer.text


def test_server_app_signs_in_many_people(
    server: KeyfobServer, fakellm: FakeLLM, tmp_path: Path
) -> None:
    cli(
        server.data_dir,
        "providers",
        "add",
        "fake",
        "--base-url",
        fakellm.base_url,
        "-m",
        "gpt-4o-mini",
        KEYFOB_PROVIDER_KEY="sk-test-upstream",
    )
    asyncio.run(_add_people(server.data_dir, fakellm.base_url))
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    added = cli(
        server.data_dir,
        "apps",
        "add",
        "Chat server",
        "--confidential",
        "--redirect-uri",
        f"{app_url}/callback",
    ).stdout
    client_id = re.search(r"client_id: (\S+)", added).group(1)  # type: ignore[union-attr]
    secret = re.search(r"client_secret: (\S+)", added).group(1)  # type: ignore[union-attr]
    log = open(tmp_path / "app.log", "w")  # noqa: SIM115 (closed once the child has it)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(APP),
            "--keyfob",
            server.url,
            "--client-id",
            client_id,
            "--port",
            str(port),
        ],
        env={**os.environ, "KEYFOB_CLIENT_SECRET": secret},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()  # the child has its own handle
    try:
        wait_http(app_url + "/", proc=proc)
        people = {OWNER: OWNER_PASSWORD, **PEOPLE}
        visitors = {name: visit(app_url, name, pw) for name, pw in people.items()}
        for name, browser in visitors.items():
            text = ask(browser, app_url, f"hello from {name}")
            assert "Hi there" in text and re.search(r"Cost \$\d", text), text[:500]

        rows = ledger_rows(server.data_dir)
        assert len(rows) == 3
        grants: dict[str, Any] = {r["grant_id"] for r in rows}  # type: ignore[assignment]
        assert len(grants) == 3  # one grant per person, each metered separately

        # one visitor signs out: their refresh token family is revoked, the others go on
        alice = visitors["alice"]
        home = alice.get(app_url + "/", timeout=30)
        forms = re.findall(r'action="/logout"', home.text)
        assert forms
        token = re.search(r'name=csrf value="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
        alice.post(app_url + "/logout", data={"csrf": token}, timeout=30)
        assert "Sign in with Keyfob" in alice.get(app_url + "/", timeout=30).text
        assert "Hi there" in ask(visitors["bob"], app_url, "hello again")
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in (tmp_path / "app.log").read_text()
