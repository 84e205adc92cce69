"""In-process Keyfob for protocol and page tests, and a live loopback server for flows
driven by real client libraries.

``InProcess`` wraps Starlette's TestClient over ``create_app`` (the lifespan runs, so the
store and services are the real ones); ``LiveServer`` runs the same app under uvicorn in
a thread on 127.0.0.1, for clients that only speak real HTTP (Authlib, requests-oauthlib).
Both expose ``url``, ``data_dir`` and ``settings`` and can seed the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from html import unescape
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import uvicorn
from starlette.testclient import TestClient

from keyfob.accounts.passwords import hash_password
from keyfob.oauth import rfc7636
from keyfob.oauth.clients import register_app
from keyfob.server import create_app
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import User
from tests.support import free_port

OWNER = "owner"
OWNER_PASSWORD = "correct horse battery staple"
T = TypeVar("T")


def hidden(html: str, name: str) -> str:
    m = re.search(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert m, f"no hidden field {name!r} in page:\n{html[:2000]}"
    return unescape(m.group(1))


def checkboxes(html: str, name: str = "models") -> list[str]:
    return [
        unescape(v)
        for v in re.findall(
            rf'<input type="checkbox" id="[^"]*" name="{re.escape(name)}" value="([^"]*)"', html
        )
    ]


def checked(html: str, name: str = "models") -> list[str]:
    return [
        unescape(v)
        for v in re.findall(
            rf'<input type="checkbox" id="[^"]*" name="{re.escape(name)}" value="([^"]*)" checked',
            html,
        )
    ]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, rfc7636.s256(verifier)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


_OWNER_HASH: list[str] = []


async def seed_owner_and_provider(store: Store, models: tuple[str, ...]) -> User:
    """The owner (argon2 hash computed once per test run) and a local provider."""
    owner = await store.users.owner()
    if owner is None:
        if not _OWNER_HASH:
            _OWNER_HASH.append(hash_password(OWNER_PASSWORD))
        owner = await store.users.create(OWNER, _OWNER_HASH[0], is_owner=True)
    if models:
        await store.providers.add(
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url="http://127.0.0.1:9/v1",
            credential_envelope=None,
            is_local=True,
            models=list(models),
        )
    return owner


class Browser:
    """The person's side: log in, open an authorization URL, answer the consent page."""

    def __init__(self, http: httpx.Client, base: str) -> None:
        self.http = http
        self.base = base

    def login(self, username: str = OWNER, password: str = OWNER_PASSWORD) -> httpx.Response:
        page = self.http.get(self.base + "/login")
        assert page.status_code == 200, page.text
        return self.http.post(
            self.base + "/login",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "username": username,
                "password": password,
                "next": "/",
            },
        )

    def consent_page(self, authorize_url: str) -> httpx.Response:
        page = self.http.get(authorize_url)
        assert page.status_code == 200, (page.status_code, page.headers, page.text[:2000])
        return page

    def decide(
        self,
        page: httpx.Response,
        *,
        action: str = "approve",
        cap_usd: str = "5",
        window: str = "month",
        models: list[str] | None = None,
        post_to: str = "/oauth/authorize",
    ) -> httpx.Response:
        data: dict[str, Any] = {
            "csrf_token": hidden(page.text, "csrf_token"),
            "request_id": hidden(page.text, "request_id"),
            "action": action,
            "cap_usd": cap_usd,
            "window": window,
            "models": models if models is not None else checked(page.text),
        }
        return self.http.post(self.base + post_to, data=data)

    def approve(self, authorize_url: str, **choices: Any) -> str:
        """Consent to ``authorize_url``; returns the redirect Location (a 303)."""
        answer = self.decide(self.consent_page(authorize_url), **choices)
        assert answer.status_code == 303, (answer.status_code, answer.text[:2000])
        return answer.headers["location"]

    def enter_device_code(self, user_code: str) -> httpx.Response:
        form = self.http.get(self.base + "/device")
        assert form.status_code == 200, form.text
        return self.http.post(
            self.base + "/device",
            data={"csrf_token": hidden(form.text, "csrf_token"), "user_code": user_code},
        )

    def approve_device(self, user_code: str, **choices: Any) -> httpx.Response:
        page = self.enter_device_code(user_code)
        assert page.status_code == 200, page.text[:2000]
        return self.decide(page, post_to="/device/consent", **choices)


class InProcess:
    """``create_app`` under Starlette's TestClient, with helpers to seed and sign in."""

    def __init__(self, data_dir: Path, models: tuple[str, ...] = ("m1", "m2"), **settings: Any):
        self.data_dir = data_dir
        if settings.get("mode") == "hosted":  # hosted mode names its public URL
            settings.setdefault("public_url", "http://127.0.0.1:8787")
        self.settings = Settings(data_dir=data_dir, **settings)
        self.app = create_app(self.settings)
        self.client = TestClient(self.app, base_url=self.settings.issuer, follow_redirects=False)
        self.url = self.settings.issuer
        self._models = models
        self._session = False

    def __enter__(self) -> InProcess:
        self.client.__enter__()
        self.owner = self.run(seed_owner_and_provider, self.store, self._models)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    @property
    def store(self) -> Store:
        store: Store = self.app.state.kf.store
        return store

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        portal = self.client.portal
        assert portal is not None
        return portal.call(lambda: fn(*args, **kwargs))

    def browser(self) -> Browser:
        return Browser(self.client, "")

    def logged_in(self) -> Browser:
        """A browser with the owner's session (logging in once per session)."""
        browser = self.browser()
        if not self._session:
            assert browser.login().status_code == 303
            self._session = True
        return browser

    def new_session(self) -> None:
        """Forget every cookie: the next requests come from another browser."""
        self.client.cookies.clear()
        self._session = False

    def register(
        self, redirect_uris: list[str], *, public: bool = True, name: str = "Test app"
    ) -> tuple[str, str | None]:
        client, secret = self.run(
            register_app, self.store, name=name, redirect_uris=redirect_uris, public=public
        )
        return client.id, secret

    def authorize_url(self, client_id: str, redirect_uri: str, challenge: str, **extra: str) -> str:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st-123",
            **extra,
        }
        return "/oauth/authorize?" + urlencode(params)

    def code_flow(
        self, client_id: str, redirect_uri: str, secret: str | None = None, **extra: str
    ) -> dict[str, Any]:
        """Log in, consent, exchange the code: the token response."""
        verifier, challenge = pkce()
        location = self.logged_in().approve(
            self.authorize_url(client_id, redirect_uri, challenge, **extra)
        )
        code = query_of(location)["code"]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": client_id,
        }
        if secret:
            form["client_secret"] = secret
        answer = self.client.post("/oauth/token", data=form)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


class LiveServer:
    """The app under uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(
        self,
        data_dir: Path,
        models: tuple[str, ...] = ("m1", "m2"),
        *,
        owner: bool = True,
        **settings: Any,
    ):
        self.port = free_port()
        self.data_dir = data_dir
        if settings.get("mode") == "hosted":  # hosted mode names its public URL
            settings.setdefault("public_url", f"http://127.0.0.1:{self.port}")
        self.settings = Settings(data_dir=data_dir, port=self.port, **settings)
        self.url = self.settings.issuer
        self._models = models
        self._owner = owner  # False: a first run, the setup page still open
        #: The Starlette app being served (set on enter), for tests that add a route.
        self.app: Any = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def in_store(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        async def go() -> T:
            store = await Store.open(self.settings.effective_database_url)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def __enter__(self) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._owner:
            self.in_store(lambda store: seed_owner_and_provider(store, self._models))
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            ws="none",
            http="h11",
            loop="asyncio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert self._thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(20)

    def register(
        self, redirect_uris: list[str], *, public: bool = True, name: str = "Test app"
    ) -> tuple[str, str | None]:
        async def go(store: Store) -> tuple[str, str | None]:
            client, secret = await register_app(
                store, name=name, redirect_uris=redirect_uris, public=public
            )
            return client.id, secret

        return self.in_store(go)


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
