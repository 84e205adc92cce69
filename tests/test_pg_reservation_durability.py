"""Hosted metering's default durability (``db_reservation_durability = commit``): a
common-case reservation commits without waiting for the WAL flush, and a crash of
PostgreSQL that undoes it is repaired by the gateway that made it.

A crash before the flush is imitated the way it looks from outside: the reservation (and
its settlement) undone in the database, and every connection ended, which a crash does
too. ``tests/test_pg_crash.py`` crashes a real PostgreSQL of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keyfob.metering.types import Reserved, Settlement
from keyfob.store import Store
from tests.backends import PG_ADMIN, backend_store, request, seed, window_limit

KEY = "month:2026-12"


def settled(cost: int) -> Settlement:
    return Settlement("settled", cost, "upstream", 10, 10)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with backend_store("postgresql", tmp_path) as s:
        yield s


@pytest.fixture
async def db(store: Store) -> AsyncIterator[Any]:
    """A connection of the test's own to the store's database (the crash's hand)."""
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{store.engine.url.database}")
    try:
        yield conn
    finally:
        await conn.close()


async def _crash(db: Any, store: Store) -> None:
    """Every connection of the store ends, as when PostgreSQL crashes."""
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        store.engine.url.database,
    )


async def _undo_reservation(db: Any, entry_id: str, grant_id: str, hold: int) -> None:
    """As if the reservation's commit had never reached the disk."""
    async with db.transaction():
        await db.execute("DELETE FROM ledger WHERE id = $1", entry_id)
        await db.execute(
            "UPDATE counters SET reserved = reserved - $3 WHERE scope = $1 AND key = $2",
            grant_id,
            KEY,
            hold,
        )


async def _until(check: Any, within_s: float = 3.0) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within_s, "not repaired in time"
        await asyncio.sleep(0.01)


async def test_the_reservation_does_not_wait_for_the_flush_but_the_rest_do(
    store: Store, db: Any
) -> None:
    """The default form of the common case's statements turns ``synchronous_commit`` off
    for its own transaction only; a general reservation (several counters) and the
    ``disk`` durability keep the session's setting (on: flushed before returning)."""
    from keyfob.store.metering.pg_batch import _MANY_UNFLUSHED, RESERVE_ONE_UNFLUSHED

    for sql, n in ((RESERVE_ONE_UNFLUSHED, 21), (_MANY_UNFLUSHED, 32)):
        assert "set_config('synchronous_commit', 'off', true)" in sql
        async with db.transaction():
            await db.fetch(sql, *([None] * n))  # holds nothing, but sets the commit mode
            assert await db.fetchval("SHOW synchronous_commit") == "off"
        assert await db.fetchval("SHOW synchronous_commit") == "on"
    assert store.metering.durability == "commit"  # type: ignore[attr-defined]
    assert store.metering.batches.unflushed  # type: ignore[attr-defined]
    store.metering.durability = "disk"  # type: ignore[attr-defined]
    assert not store.metering.batches.unflushed  # type: ignore[attr-defined]


async def test_a_reservation_postgresql_lost_is_put_back_at_once(store: Store, db: Any) -> None:
    """The gateway learns of the crash from its connections ending (no call of its own
    needed) and puts its recent reservations back: the row, reserved, and the hold on the
    counter, so other processes decide against it again; the settlement then moves it as
    usual, exactly once however often the connections are lost."""
    ids = await seed(store, 10**9)
    limits = (window_limit(ids[2], KEY, 10**9),)
    r = await store.metering.reserve(request(ids, "lost1", 500, limits))
    assert isinstance(r, Reserved)
    await _undo_reservation(db, "lost1", ids[2], 500)
    assert await store.ledger.counter(ids[2], KEY) == (0, 0)
    await _crash(db, store)

    async def back() -> bool:
        row = await db.fetchrow("SELECT status FROM ledger WHERE id = 'lost1'")
        return row is not None

    await _until(back)  # no metering call in between: the termination was enough
    assert await db.fetchval("SELECT status FROM ledger WHERE id = 'lost1'") == "reserved"
    assert await store.ledger.counter(ids[2], KEY) == (0, 500)

    await store.metering.settle("lost1", settled(120))
    assert await store.ledger.counter(ids[2], KEY) == (120, 0)
    for _ in range(2):  # more losses: the replay changes nothing any more
        await _crash(db, store)
        await asyncio.sleep(0.1)
        r2 = await store.metering.reserve(request(ids, f"n{_}", 100, limits))
        assert isinstance(r2, Reserved)
        await store.metering.settle(r2.entry_id, settled(0))
    assert await store.ledger.counter(ids[2], KEY) == (120, 0)
    [row] = await db.fetch("SELECT status, cost_micro_usd FROM ledger WHERE id = 'lost1'")
    assert (row["status"], row["cost_micro_usd"]) == ("settled", 120)


async def test_a_reservation_lost_with_its_settlement_comes_back_settled(
    store: Store, db: Any
) -> None:
    """Both commits lost (the settlement came after the reservation in the WAL, so it
    cannot survive alone): the replay puts the reservation back, then settles it."""
    ids = await seed(store, 10**9)
    limits = (window_limit(ids[2], KEY, 10**9),)
    r = await store.metering.reserve(request(ids, "both", 400, limits))
    assert isinstance(r, Reserved)
    await store.metering.settle("both", settled(90))
    assert await store.ledger.counter(ids[2], KEY) == (90, 0)
    async with db.transaction():
        await db.execute("DELETE FROM ledger WHERE id = 'both'")
        await db.execute(
            "UPDATE counters SET spent = spent - 90 WHERE scope = $1 AND key = $2", ids[2], KEY
        )
    await _crash(db, store)

    async def settled_again() -> bool:
        return bool(await db.fetchval("SELECT status = 'settled' FROM ledger WHERE id = 'both'"))

    await _until(settled_again)
    assert await store.ledger.counter(ids[2], KEY) == (90, 0)


async def test_a_reservation_settled_meanwhile_is_never_put_back(store: Store, db: Any) -> None:
    """A row the ledger has, in any status, is left alone: a mere network blip after a
    settlement must not hold the money again."""
    ids = await seed(store, 10**9)
    limits = (window_limit(ids[2], KEY, 10**9),)
    for i in range(5):
        r = await store.metering.reserve(request(ids, f"ok{i}", 300, limits))
        assert isinstance(r, Reserved)
        await store.metering.settle(f"ok{i}", settled(50))
    open_one = await store.metering.reserve(request(ids, "open", 300, limits))
    assert isinstance(open_one, Reserved)
    await _crash(db, store)
    await asyncio.sleep(0.2)
    await _until(lambda: _not_due(store))
    assert await store.ledger.counter(ids[2], KEY) == (250, 300)
    await store.metering.settle("open", settled(50))
    assert await store.ledger.counter(ids[2], KEY) == (300, 0)


async def _not_due(store: Store) -> bool:
    return not store.metering.replays.due  # type: ignore[attr-defined]


async def test_disk_durability_keeps_no_reservation_for_replay(tmp_path: Path) -> None:
    """``disk``: each reservation is flushed before it returns, so none is kept."""
    async with backend_store("postgresql-disk", tmp_path) as store:
        ids = await seed(store, 10**9)
        limits = (window_limit(ids[2], KEY, 10**9),)
        r = await store.metering.reserve(request(ids, "d1", 100, limits))
        assert isinstance(r, Reserved)
        assert store.metering.replays.start()[1] == []  # type: ignore[attr-defined]
