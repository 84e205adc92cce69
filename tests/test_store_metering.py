"""The reserve/settle pair on both engines of record (SQLite and PostgreSQL), attacked
with concurrent reservations from many tasks and several engines (as several gateway
processes would be)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from keyfob.store import Store
from keyfob.store.metering import Refused, Reserved, Settlement, WindowLimit
from keyfob.store.records import Token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
        return
    name = f"keyfob_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def seed(store: Store, cap: int) -> tuple[str, str, str, str]:
    user = await store.users.create(f"u{secrets.token_hex(3)}", "x", is_owner=True)
    client = await store.clients.add(
        name="app", redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user.id, client_id=client.id, models=["m"], cap_micro_usd=cap
    )
    await store.tokens.save(
        Token(
            "tok",
            "access",
            grant.id,
            client.id,
            "fam",
            "",
            None,
            time.time(),
            time.time() + 3600,
            None,
            None,
        )
    )
    return user.id, client.id, grant.id, "tok"


async def test_concurrent_reservations_never_exceed_the_cap(store_url: str) -> None:
    """200 tasks over 4 engines race for a cap that fits 25 worst cases."""
    cap, worst, actual = 25_000, 1_000, 400
    stores = [await Store.open(store_url, migrate=(i == 0)) for i in range(4)]
    try:
        user_id, client_id, grant_id, token = await seed(stores[0], cap)
        window = [WindowLimit("month:2026-11", cap)]

        async def call(i: int) -> bool:
            store = stores[i % len(stores)]
            r = await store.metering.reserve(
                entry_id=f"e{i}",
                token_hash=token,
                grant_id=grant_id,
                user_id=user_id,
                client_id=client_id,
                provider_id=None,
                model="m",
                endpoint="chat",
                streamed=False,
                amount_micro_usd=worst,
                windows=window,
            )
            if isinstance(r, Refused):
                return False
            assert isinstance(r, Reserved)
            await asyncio.sleep(0)
            await store.metering.settle(f"e{i}", Settlement("settled", actual, "upstream"))
            return True

        results = await asyncio.gather(*(call(i) for i in range(200)))
        state = await stores[0].metering.window(grant_id, "month:2026-11")
        admitted = sum(results)
        assert state.reserved_micro_usd == 0
        assert state.spent_micro_usd == admitted * actual <= cap
        assert admitted >= 25  # at least every worst case that fits was admitted
        entries = await stores[0].ledger.entries(grant_id=grant_id, limit=1000)
        assert len(entries) == admitted
    finally:
        for s in stores:
            await s.close()


async def test_settle_is_idempotent_and_revocation_refuses(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        user_id, client_id, grant_id, token = await seed(store, 10_000)
        window = [WindowLimit("month:2026-11", 10_000)]
        kwargs = dict(
            token_hash=token,
            grant_id=grant_id,
            user_id=user_id,
            client_id=client_id,
            provider_id=None,
            model="m",
            endpoint="chat",
            streamed=False,
            amount_micro_usd=3_000,
            windows=window,
        )
        assert isinstance(await store.metering.reserve(entry_id="a", **kwargs), Reserved)
        await store.metering.settle("a", Settlement("settled", 1_000, "upstream"))
        assert await store.metering.settle("a", Settlement("settled", 1_000, "upstream")) == ()
        state = await store.metering.window(grant_id, "month:2026-11")
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (1_000, 0)

        assert isinstance(await store.metering.reserve(entry_id="b", **kwargs), Reserved)
        await store.grants.revoke(grant_id)
        from keyfob.store.metering import CredentialRevoked

        with pytest.raises(CredentialRevoked):
            await store.metering.reserve(entry_id="c", **kwargs)
        # the call in flight when the grant ended still settles: no lost usage
        await store.metering.settle("b", Settlement("settled", 500, "upstream"))
        # and a dead reservation is charged in full at reconciliation
        assert await store.metering.reconcile_dead(time.time()) == 0
        state = await store.metering.window(grant_id, "month:2026-11")
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (1_500, 0)
    finally:
        await store.close()


async def test_dead_reservations_are_charged_once(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        user_id, client_id, grant_id, token = await seed(store, 10_000)
        window = [WindowLimit("month:2026-11", 10_000)]
        await store.metering.reserve(
            entry_id="dead",
            token_hash=token,
            grant_id=grant_id,
            user_id=user_id,
            client_id=client_id,
            provider_id=None,
            model="m",
            endpoint="chat",
            streamed=True,
            amount_micro_usd=2_500,
            windows=window,
        )
        assert await store.metering.reconcile_dead(time.time() + 1) == 1
        assert await store.metering.reconcile_dead(time.time() + 1) == 0
        entry = await store.ledger.entry("dead")
        assert entry is not None
        assert entry.status == "charged_reservation" and entry.needs_reconciliation
        state = await store.metering.window(grant_id, "month:2026-11")
        assert (state.spent_micro_usd, state.reserved_micro_usd) == (2_500, 0)
    finally:
        await store.close()
