"""Driving the login and consent pages as a browser would (requests + regex on the HTML).

Shared by the OAuth flow tests and the web page tests.
"""

from __future__ import annotations

import asyncio
import re
from html import unescape
from typing import Any

import requests

from keyfob.oauth.clients import register_app
from keyfob.settings import Settings
from keyfob.store import Store
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import KeyfobServer


def hidden(html: str, name: str) -> str:
    m = re.search(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert m, f"no hidden field {name!r} in page:\n{html[:2000]}"
    return unescape(m.group(1))


def checkboxes(html: str, name: str) -> list[str]:
    return [
        unescape(v)
        for v in re.findall(
            rf'<input type="checkbox" id="[^"]*" name="{re.escape(name)}" value="([^"]*)"', html
        )
    ]


def login(
    browser: requests.Session,
    server: KeyfobServer,
    username: str = OWNER,
    password: str = OWNER_PASSWORD,
    next_url: str = "/",
) -> requests.Response:
    page = browser.get(server.url + "/login", timeout=10)
    assert page.status_code == 200, page.text
    return browser.post(
        server.url + "/login",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "username": username,
            "password": password,
            "next": next_url,
        },
        allow_redirects=False,
        timeout=10,
    )


def consent(
    browser: requests.Session,
    authorize_url: str,
    *,
    action: str = "approve",
    cap_usd: str | None = None,
    models: list[str] | None = None,
) -> str:
    """Open the authorization URL (logged in), submit the consent form; return Location."""
    page = browser.get(authorize_url, allow_redirects=False, timeout=10)
    assert page.status_code == 200, (page.status_code, page.headers, page.text[:2000])
    data: dict[str, Any] = {
        "csrf_token": hidden(page.text, "csrf_token"),
        "request_id": hidden(page.text, "request_id"),
        "action": action,
        "cap_usd": cap_usd if cap_usd is not None else "5",
        "models": models if models is not None else checkboxes(page.text, "models"),
    }
    base = authorize_url.split("/oauth/authorize", 1)[0]
    answer = browser.post(base + "/oauth/authorize", data=data, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, (answer.status_code, answer.text[:2000])
    return answer.headers["location"]


def logged_in_browser(server: KeyfobServer) -> requests.Session:
    browser = requests.Session()
    response = login(browser, server)
    assert response.status_code == 303, response.text
    return browser


async def _with_store(server: KeyfobServer, fn: Any) -> Any:
    store = await Store.open(Settings(data_dir=server.data_dir).effective_database_url)
    try:
        return await fn(store)
    finally:
        await store.close()


def in_store(server: KeyfobServer, fn: Any) -> Any:
    """Run ``await fn(store)`` against the running server's database."""
    return asyncio.run(_with_store(server, fn))


def register(
    server: KeyfobServer, redirect_uris: list[str], *, public: bool = True, name: str = "Test app"
) -> tuple[str, str | None]:
    async def go(store: Store) -> tuple[str, str | None]:
        client, secret = await register_app(
            store, name=name, redirect_uris=redirect_uris, public=public
        )
        return client.id, secret

    result: tuple[str, str | None] = in_store(server, go)
    return result


def seed_provider(
    server: KeyfobServer, name: str = "fake", models: tuple[str, ...] = ("m1", "m2")
) -> None:
    async def go(store: Store) -> None:
        owner = await store.users.owner()
        assert owner is not None
        await store.providers.add(
            user_id=owner.id,
            name=name,
            kind="openai_compatible",
            base_url="http://127.0.0.1:9/v1",
            credential_envelope=None,
            is_local=True,
            models=list(models),
        )

    in_store(server, go)
