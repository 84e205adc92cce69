"""Every metering backend as a store, for the shared backend tests.

- ``writeback``: the serving process of a SQLite database (decides in memory, journal);
- ``sqlite``: any other SQLite opener (one transaction per call);
- ``postgresql``: hosted (one SQL function call per call), on a fresh database.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from keyfob.metering.types import Counter, Limit, Refill, ReserveRequest
from keyfob.store import Store
from keyfob.store.records import Token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["writeback", "sqlite", "postgresql"]
#: The rules suite also runs PostgreSQL with every reservation in the form that releases
#: its locks before the disk sync (``PostgresMetering.form``, with every reservation
#: flushed), which the backend otherwise only takes while another reservation of the
#: process is on its way, and
#: with the common case's one-statement functions off (``common_case``), so that
#: ``keyfob_reserve`` is held to the rules for single-counter limits too, and with the
#: common case never batched (``batching``: each op in a round trip of its own), and
#: with every reservation flushed before it returns (``durability = "disk"``; the
#: default commits the common case's without waiting for the flush).
RULE_BACKENDS = [
    *BACKENDS,
    "postgresql-procedure",
    "postgresql-general",
    "postgresql-unbatched",
    "postgresql-disk",
]


def configure(store: Store, kind: str) -> None:
    """The PostgreSQL metering variant a backend kind names."""
    if kind == "postgresql-procedure":
        store.metering.durability = "disk"  # type: ignore[attr-defined]
        store.metering.form = "procedure"  # type: ignore[attr-defined]
    if kind == "postgresql-disk":
        store.metering.durability = "disk"  # type: ignore[attr-defined]
    if kind == "postgresql-general":
        store.metering.common_case = False  # type: ignore[attr-defined]
    if kind == "postgresql-unbatched":
        store.metering.batching = False  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database's SQLAlchemy URL, dropped afterwards."""
    name = f"keyfob_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def backend_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    if kind.startswith("postgresql"):
        async with pg_database() as url:
            store = await Store.open(url)
            configure(store, kind)
            try:
                yield store
            finally:
                await store.close()
        return
    store = await Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", serving=kind == "writeback"
    )
    try:
        yield store
    finally:
        await store.close()


def window_limit(grant_id: str, key: str, cap: int) -> Limit:
    """A bare calendar-style limit of one counter (no period: never computed from the
    ledger), as a caller that plans no grant uses."""
    return Limit(key, key, cap, (Counter(grant_id, key),))


def request(
    ids: tuple[str, str, str, str],
    entry_id: str,
    amount: int,
    limits: tuple[Limit, ...],
    *,
    now: float | None = None,
    basis: float | None = None,
    tokens: int | None = None,
    streamed: bool = False,
    instance_id: str | None = None,
    refill: Refill | None = None,
) -> ReserveRequest:
    """A reservation of ``amount`` under ``limits`` for the grant of ``seed``'s ids."""
    user_id, client_id, grant_id, token = ids
    return ReserveRequest(
        entry_id,
        token,
        grant_id,
        user_id,
        client_id,
        None,
        "m",
        "chat",
        streamed,
        amount,
        time.time() if now is None else now,
        limits,
        tokens,
        refill,
        None,
        basis,
        instance_id,
    )


async def seed(store: Store, cap: int, model: str = "m") -> tuple[str, str, str, str]:
    """A person, an app, a grant and a live access token ``tok``: (user, client, grant,
    token hash)."""
    user = await store.users.create(f"u{secrets.token_hex(3)}", "x", is_owner=True)
    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id, client_id=client.id, models=[model], cap_micro_usd=cap
    )
    token = f"tok-{grant.id}"
    await store.tokens.save(
        Token(token, "access", grant.id, client.id, "fam", "", None, 0, 1e12, None, None)
    )
    return user.id, client.id, grant.id, token
