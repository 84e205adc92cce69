"""Helpers for the many-people tests: a PostgreSQL database per test, an in-process
Keyfob in personal (SQLite) or hosted (PostgreSQL) mode, people with a known password,
their providers and grants seeded in the store, and one cookie jar per person (the
TestClient has one jar; each person's session is swapped in and out of it)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from keyfob.accounts.passwords import hash_password
from keyfob.store.records import User
from tests.oauth_app import InProcess, hidden
from tests.support import grant_token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PASSWORD = "people have good passwords"
MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
#: The session key ring every process of a hosted deployment shares.
SESSION_KEYS = secrets.token_urlsafe(48)
_HASH: list[str] = []


async def _admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (an asyncpg SQLAlchemy URL), dropped afterwards."""
    name = f"keyfob_test_{secrets.token_hex(6)}"
    asyncio.run(_admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)'))


def hosted(data_dir: Path, database_url: str, **settings: Any) -> InProcess:
    """An in-process hosted Keyfob on PostgreSQL (loopback, so http is allowed; the test
    upstreams listen on loopback, a deliberately private upstream)."""
    settings.setdefault("upstream_allow_private", ("127.0.0.0/8",))
    settings.setdefault("session_keys", SESSION_KEYS)
    return InProcess(
        data_dir, mode="hosted", database_url=database_url, master_key=MASTER_KEY, **settings
    )


def password_hash() -> str:
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    return _HASH[0]


def add_person(app: InProcess, username: str, role: str = "member") -> User:
    return app.run(
        app.store.people.create_person, username, password_hash(), role=role, timezone="UTC"
    )


def sign_in(app: InProcess, username: str, password: str = PASSWORD) -> dict[str, str]:
    """A fresh session for ``username``; returns its cookie jar (see ``use``)."""
    app.new_session()
    form = app.client.get("/login")
    answer = app.client.post(
        "/login",
        data={
            "csrf_token": hidden(form.text, "csrf_token"),
            "username": username,
            "password": password,
            "next": "/",
        },
    )
    assert answer.status_code == 303, (answer.status_code, answer.text[:500])
    app._session = True
    return dict(app.client.cookies)


def use(app: InProcess, jar: dict[str, str]) -> None:
    """Make the next requests come from the browser holding ``jar``."""
    app.client.cookies.clear()
    for name, value in jar.items():
        app.client.cookies.set(name, value)


def csrf(app: InProcess, path: str = "/settings") -> str:
    return hidden(app.client.get(path).text, "csrf_token")


@dataclass
class Seeded:
    """A person's objects: a keyed provider, a registered app with a live grant and
    token, a price and limit override, an alias, wallet money."""

    user: User
    provider_id: str
    provider_name: str
    api_key: str
    client_id: str
    app_name: str
    grant_id: str
    token: str


def seed_person(app: InProcess, user: User, base_url: str, marker: str) -> Seeded:
    """Objects for ``user``, every name carrying ``marker`` (so a leak is findable)."""
    kf = app.app.state.kf
    api_key = f"sk-{marker}-{secrets.token_hex(12)}"
    provider_name = f"{marker}prov"
    app_name = f"{marker} App"

    async def go() -> Seeded:
        from keyfob.oauth.clients import register_app
        from keyfob.store.records import LimitOverride
        from keyfob.tokens import new_id

        pid = new_id()
        provider = await app.store.providers.add(
            user_id=user.id,
            name=provider_name,
            kind="openai_compatible",
            base_url=base_url,
            credential_envelope=kf.vault.encrypt(api_key, context=pid),
            models=[f"{marker}-model"],
            provider_id=pid,
        )
        await app.store.providers.set_price(
            provider.id,
            f"{marker}-model",
            input_micro_usd_per_mtok=150_000,
            output_micro_usd_per_mtok=600_000,
        )
        await app.store.providers.set_limits(
            provider.id, f"{marker}-model", LimitOverride(context_window_tokens=50_000)
        )
        await app.store.providers.set_alias(
            user.id, f"{marker}alias", f"{provider_name}/{marker}-model"
        )
        await app.store.wallets.top_up(user.id, 3_000_000, f"{marker} money")
        client, _secret = await register_app(
            app.store,
            name=app_name,
            redirect_uris=["https://app.example/cb"],
            public=True,
            registered_by=user,
        )
        minted = await grant_token(
            app.store,
            user_id=user.id,
            models=[f"{provider_name}/{marker}-model"],
            cap_micro_usd=5_000_000,
            client_name=f"{marker} Granted",
        )
        return Seeded(
            user,
            provider.id,
            provider_name,
            api_key,
            client.id,
            app_name,
            str(minted["grant_id"]),
            str(minted["token"]),
        )

    return app.run(go)
