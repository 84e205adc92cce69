"""Grant expiry (``keyfob_expires_in``, the consent page, ``keyfob apps expire``) and
``keyfob dev-token`` (issue 15).

An app may ask for a grant that ends; the person decides on the consent page and can
change it later. An ended grant is refused like a revoked one on every endpoint: the
gateway, Keyfob's own API, refresh, introspection.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import types
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from authlib.integrations.requests_client import OAuth2Session

from keyfob.gateway import headers as h
from keyfob.oauth.consent import Suggestion, chosen_expiry, parse_expires_in, parse_suggestion
from keyfob.oauth.dev_tokens import DevTokenRefused, mint_dev_token
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.apps import UNCHANGED
from tests.oauth_browser import checkboxes, hidden, in_store, logged_in_browser, register
from tests.support import FakeLLM, KeyfobServer, cli
from tests.test_gateway_openai import MODEL, link

REDIRECT = "http://127.0.0.1/cb"


# --- the parameter ------------------------------------------------------------------------


def test_keyfob_expires_in_is_whole_seconds_within_bounds() -> None:
    assert parse_suggestion({"keyfob_expires_in": "3600"}) == Suggestion(expires_in_s=3600)
    assert Suggestion(expires_in_s=60).as_params() == [("keyfob_expires_in", "60")]
    for bad in ("59", "31708801", "1.5", "-60", "١٢٠", "", "1e5", "9" * 20):
        with pytest.raises(ValueError, match="keyfob_expires_in"):
            parse_expires_in(bad)


def test_the_consent_forms_expiry_value() -> None:
    assert chosen_expiry("0", 100.0) is None
    assert chosen_expiry("keep", 100.0) is UNCHANGED
    assert chosen_expiry("3600", 100.0) == 3700.0
    assert isinstance(chosen_expiry("10", 100.0), str)  # a message, never an exception


# --- the flow -----------------------------------------------------------------------------


def _selected(html: str, name: str) -> str:
    select = re.search(rf'<select id="{name}" name="{name}">(.*?)</select>', html, re.S)
    assert select, html[:3000]
    chosen = re.search(r'<option value="([^"]*)" selected>', select.group(1))
    assert chosen
    return unescape(chosen.group(1))


def _sign_in(server: KeyfobServer, client_id: str, extra: dict[str, str], expires_in: str) -> Any:
    """Authlib's client through the real consent page; the person picks ``expires_in``."""
    verifier = secrets.token_urlsafe(48)
    with (
        logged_in_browser(server) as browser,
        OAuth2Session(
            client_id,
            redirect_uri=REDIRECT,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        ) as oauth,
    ):
        url, _state = oauth.create_authorization_url(
            server.url + "/oauth/authorize", code_verifier=verifier, **extra
        )
        page = browser.get(url, allow_redirects=False, timeout=10)
        assert page.status_code == 200, page.text[:2000]
        shown = page.text
        answer = browser.post(
            server.url + "/oauth/authorize",
            data={
                "csrf_token": hidden(shown, "csrf_token"),
                "request_id": hidden(shown, "request_id"),
                "action": "approve",
                "cap_usd": "5",
                "models": checkboxes(shown, "models"),
                "expires_in": expires_in,
            },
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 303, answer.text[:2000]
        location = answer.headers["location"]
        assert "code" in parse_qs(urlsplit(location).query), location
        token = oauth.fetch_token(
            server.url + "/oauth/token", authorization_response=location, code_verifier=verifier
        )
        return shown, token, oauth


def _grant(server: KeyfobServer) -> Any:
    async def go(store: Store) -> Any:
        owner = await store.users.owner()
        assert owner is not None
        [grant] = await store.grants.list(owner.id)
        return grant

    return in_store(server, go)


def _set_expiry(server: KeyfobServer, ends: float | None) -> None:
    """What ``keyfob apps expire`` does, without a process start in the way of timing."""

    grant_id = _grant(server).id

    async def go(store: Store) -> None:
        await store.grants.set_expiry(grant_id, ends, token_ttls_s=(3600, 30 * 86400))

    in_store(server, go)


def test_app_asks_for_an_end_and_the_person_shortens_it(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    link(server.data_dir, "fake", fakellm.base_url)
    client_id, _ = register(server, [REDIRECT])
    before = time.time()
    page, token, oauth = _sign_in(server, client_id, {"keyfob_expires_in": "172800"}, "3600")
    # the consent page showed the app's ask, pre-selected
    assert "The app asks for access that ends" in page and "2 days" in page
    assert _selected(page, "expires_in") == "172800"
    # the person chose one hour: the grant ends then, and so do its tokens
    assert 3590 <= token["expires_in"] <= 3600
    grant = _grant(server)
    assert grant.expires_at is not None and before + 3600 <= grant.expires_at <= time.time() + 3600
    refreshed = oauth.refresh_token(
        server.url + "/oauth/token", refresh_token=token["refresh_token"]
    )
    assert refreshed["expires_in"] <= 3600
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key=refreshed["access_token"], max_retries=0
    ) as c:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    # signing in again keeps the end unless the person changes it
    page2, _token2, _oauth2 = _sign_in(server, client_id, {}, "keep")
    assert _selected(page2, "expires_in") == "keep"
    assert _grant(server).expires_at == grant.expires_at


def test_an_ended_grant_is_refused_everywhere(server: KeyfobServer, fakellm: FakeLLM) -> None:
    link(server.data_dir, "fake", fakellm.base_url)
    client_id, _ = register(server, [REDIRECT], name="Ends soon")
    _page, token, _oauth = _sign_in(server, client_id, {}, "0")
    assert _grant(server).expires_at is None
    access = token["access_token"]
    with openai.OpenAI(base_url=server.url + "/v1", api_key=access, max_retries=0) as c:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
        # the person sets an end, from the terminal...
        out = cli(server.data_dir, "apps", "expire", "Ends soon", "--in", "1h").stdout
        assert "ends at" in out
        assert "until 20" in cli(server.data_dir, "apps", "list").stdout
        assert 3500 < _grant(server).expires_at - time.time() <= 3600
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
        # ... then moves it to two seconds from now (the CLI takes longer than that to start)
        _set_expiry(server, time.time() + 2)
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
        time.sleep(2.2)
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    allowance = httpx.get(
        server.url + "/v1/keyfob/allowance", headers={"Authorization": f"Bearer {access}"}
    )
    assert allowance.status_code == 401
    messages = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": access, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert messages.status_code == 401
    refused = httpx.post(
        server.url + "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": client_id,
        },
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")


def test_lifting_an_end_gives_live_tokens_their_own_life_back(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    link(server.data_dir, "fake", fakellm.base_url)
    client_id, _ = register(server, [REDIRECT], name="Lifted")
    _page, token, _oauth = _sign_in(server, client_id, {}, "3600")
    cli(server.data_dir, "apps", "expire", "Lifted", "--at", "2020-01-01T00:00:00Z")
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    deadline = time.monotonic() + 3
    while httpx.get(server.url + "/v1/models", headers=auth).status_code != 401:
        assert time.monotonic() < deadline, "an ended grant was still served after 3 s"
        time.sleep(0.1)
    cli(server.data_dir, "apps", "expire", "Lifted", "--never")
    assert _grant(server).expires_at is None
    deadline = time.monotonic() + 3
    while httpx.get(server.url + "/v1/models", headers=auth).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    bad = cli(server.data_dir, "apps", "expire", "Lifted", "--in", "soon", check=False)
    assert bad.returncode != 0 and "duration" in bad.stderr


def test_an_end_asked_on_the_device_flow_holds_end_to_end(
    server: KeyfobServer, fakellm: FakeLLM
) -> None:
    """A CLI on the device flow (the Python helper) asks for access that ends in ten
    minutes; the person sees the ask pre-selected on the device consent page and allows
    it; the tokens live no longer than that; when the end comes, the CLI is refused."""
    from keyfob_client import DeviceCode, Keyfob, KeyfobError, MemoryCache

    link(server.data_dir, "fake", fakellm.base_url)
    client_id, _ = register(server, [REDIRECT], name="Short CLI")
    shown: dict[str, str] = {}

    def person_allows(code: DeviceCode) -> None:
        with logged_in_browser(server) as browser:
            form = browser.get(server.url + "/device", timeout=10)
            page = browser.post(
                server.url + "/device",
                data={"csrf_token": hidden(form.text, "csrf_token"), "user_code": code.user_code},
                timeout=10,
            )
            assert page.status_code == 200, page.text[:2000]
            shown["page"] = page.text
            done = browser.post(
                server.url + "/device/consent",
                data={
                    "csrf_token": hidden(page.text, "csrf_token"),
                    "request_id": hidden(page.text, "request_id"),
                    "action": "approve",
                    "cap_usd": "1",
                    "window": "month",
                    "models": checkboxes(page.text, "models"),
                    "expires_in": _selected(page.text, "expires_in"),  # as pre-selected
                },
                timeout=10,
            )
            assert done.status_code == 200 and "Device connected" in done.text, done.text[:2000]

    before = time.time()
    with Keyfob(server.url, client_id, cache=MemoryCache()) as app:
        tokens = app.sign_in(on_code=person_allows, suggest={"expires_in": "600"})
        assert "The app asks for access that ends" in shown["page"]
        assert _selected(shown["page"], "expires_in") == "600"
        grant = _grant(server)
        assert grant.expires_at is not None
        assert before + 600 <= grant.expires_at <= time.time() + 600
        assert tokens.expires_at <= grant.expires_at + 1  # the token ends with the grant
        with app.openai(max_retries=0) as c:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            _set_expiry(server, time.time() + 1.5)
            time.sleep(1.7)
            # the 401 makes the helper refresh, and the refresh token ended with the grant
            with pytest.raises(KeyfobError) as refused:
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert refused.value.code == "invalid_grant" and "expired or revoked" in str(refused.value)
        with pytest.raises(KeyfobError, match=r"not signed in|sign in again"):
            app.access_token()  # signed out: the CLI must run the device flow again


# --- keyfob dev-token ---------------------------------------------------------------------


def test_dev_token_works_once_printed_and_is_small(server: KeyfobServer, fakellm: FakeLLM) -> None:
    link(server.data_dir, "fake", fakellm.base_url)
    made = cli(server.data_dir, "dev-token", "My tool", "--cap", "0.50", "--ttl", "30m")
    token = made.stdout.strip()
    assert token.startswith("kfat_") and token not in made.stderr
    assert "Registered a public app 'My tool'" in made.stderr and "$0.50 per day" in made.stderr
    with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        assert float(raw.headers[h.LEFT]) < 0.5
        assert [m.id for m in c.models.list().data] == [MODEL]
    mine = httpx.get(
        server.url + "/v1/keyfob/allowance", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert mine["expires_at"].endswith("Z") and mine["models"] == [MODEL]
    grant = _grant(server)
    assert grant.expires_at is not None and grant.expires_at - time.time() <= 1800
    # the token is stored only as its hash
    assert token.encode() not in (server.data_dir / "keyfob.db").read_bytes()
    # a second one needs --replace, which ends the first
    again = cli(server.data_dir, "dev-token", "My tool", check=False)
    assert again.returncode != 0 and "--replace" in again.stderr
    second = cli(server.data_dir, "dev-token", "My tool", "--replace").stdout.strip()
    assert httpx.get(
        server.url + "/v1/models", headers={"Authorization": f"Bearer {second}"}
    ).is_success
    deadline = time.monotonic() + 3
    while httpx.get(
        server.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}
    ).is_success:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for args, why in (
        (("--ttl", "2d"), "24 hours"),
        (("--model", "nope/x"), "not a linked model"),
        (("--cap", "0"), "above zero"),
    ):
        bad = cli(server.data_dir, "dev-token", "Other", *args, check=False)
        assert bad.returncode != 0 and why in bad.stderr


async def test_dev_token_refused_in_hosted_mode() -> None:
    kf: Any = types.SimpleNamespace(settings=Settings(mode="hosted"))
    with pytest.raises(DevTokenRefused, match="hosted"):
        await mint_dev_token(kf, app_ref="x")


def test_dev_token_is_refused_by_the_cli_in_hosted_mode(data_dir: Path) -> None:
    """``keyfob dev-token`` on a hosted server (PostgreSQL, a master key from the
    environment) with an owner: refused in words, nothing printed, no app registered."""
    import asyncpg

    name = f"keyfob_devtoken_{secrets.token_hex(6)}"

    async def database(sql: str) -> None:
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await admin.execute(sql)
        finally:
            await admin.close()

    asyncio.run(database(f'CREATE DATABASE "{name}"'))
    try:
        hosted = {
            "KEYFOB_MODE": "hosted",
            "KEYFOB_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            "KEYFOB_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        cli(data_dir, "init", "--username", "owner", KEYFOB_PASSWORD="a long password", **hosted)
        refused = cli(data_dir, "dev-token", "My tool", check=False, **hosted)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "dev tokens are for a personal server" in " ".join(refused.stderr.split())
        assert "kfat_" not in refused.stderr
        listed = cli(data_dir, "apps", "list", **hosted).stdout
        assert "My tool" not in listed
    finally:
        asyncio.run(database(f'DROP DATABASE "{name}" WITH (FORCE)'))
