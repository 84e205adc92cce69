"""A real crash of PostgreSQL (kill -9 of every one of its processes) under load, with
hosted metering's default durability and with ``disk``: nothing a caller was told is
reserved goes missing from the ledger, nothing is counted twice, and the counters agree
with the ledger once the gateway has replayed its recent writes.

The server is the test's own (``tests/own_postgres.py``); its WAL writer is stopped for
the last half second before the crash, so that the crash finds that half second's
commits still in shared memory, never written out: under ``commit`` their loss is
certain, and the replay must put back what it undid."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import asyncpg
import pytest

from keyfob.metering.types import Refused, Reserved, Settlement
from keyfob.store import Store
from tests import own_postgres
from tests.backends import request, seed, window_limit

pytestmark = pytest.mark.skipif(not own_postgres.available(), reason="no initdb here")

KEY = "month:2026-12"
CAP, WORST, ACTUAL = 10**12, 1_000, 300
DONE = Settlement("settled", ACTUAL, "upstream")


@pytest.fixture(scope="module")
def server() -> Iterator[own_postgres.OwnPostgres]:
    pg = own_postgres.OwnPostgres(
        {"checkpoint_timeout": "1h"},
    )
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("durability", ["commit", "disk"])
async def test_a_crash_of_postgresql_loses_no_reservation(
    server: own_postgres.OwnPostgres, durability: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = await server.create_database(f"crash_{durability}")
    store = await Store.open(url)
    try:
        store.metering.durability = durability  # type: ignore[attr-defined]
        ids = await seed(store, CAP)
        limits = (window_limit(ids[2], KEY, CAP),)
        #: entry ids a caller was told are reserved (their calls went upstream), and
        #: those settled (the settlement returned)
        reserved: set[str] = set()
        settled: set[str] = set()
        stop = asyncio.Event()

        async def caller(k: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                entry = f"c{k}-{i}"
                try:
                    r = await store.metering.reserve(request(ids, entry, WORST, limits))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.sleep(0.05)  # the gateway answers 503; nothing went up
                    continue
                assert not isinstance(r, Refused)
                assert isinstance(r, Reserved)
                reserved.add(entry)
                await asyncio.sleep(0.002)  # the upstream call
                for _ in range(200):  # the gateway's settlement, until PostgreSQL is back
                    try:
                        await store.metering.settle(entry, DONE)
                        settled.add(entry)
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await asyncio.sleep(0.05)

        with caplog.at_level(logging.WARNING, logger="keyfob.metering"):
            callers = [asyncio.create_task(caller(k)) for k in range(4)]
            await asyncio.sleep(0.5)
            server.pause_wal_writer()  # the next 0.5 s of commits stay in memory
            await asyncio.sleep(0.5)
            before = len(reserved)
            server.crash()
            await asyncio.sleep(0.3)
            server.start()
            started = time.monotonic()
            while len(reserved) < before + 50:
                assert time.monotonic() - started < 60, "no calls after the restart"
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*callers)
            while store.metering.replays.due:  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)

        assert before > 20 and settled == reserved
        db = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = {r["id"]: r for r in await db.fetch("SELECT * FROM ledger")}
            counter = await db.fetchrow(
                "SELECT spent, reserved FROM counters WHERE scope = $1 AND key = $2", ids[2], KEY
            )
        finally:
            await db.close()
        missing = reserved - rows.keys()
        assert not missing, f"{len(missing)} calls that went upstream are not in the ledger"
        for entry in reserved:
            assert (rows[entry]["status"], rows[entry]["cost_micro_usd"]) == ("settled", ACTUAL)
        # rows no caller was told of: a reservation whose answer the crash cut off (never
        # upstream), left reserved at its bound for the reaper, never settled twice
        others = [r for e, r in rows.items() if e not in reserved]
        assert all(r["status"] == "reserved" for r in others)
        assert counter is not None
        assert counter["spent"] == ACTUAL * len(reserved)
        assert counter["reserved"] == sum(r["reserved_micro_usd"] for r in others)
        put_back = [
            r
            for r in caplog.records
            if r.name == "keyfob.metering" and r.getMessage().startswith("put back")
        ]
        if durability == "commit":  # the half second the WAL writer was stopped
            assert sum(r.args[0] for r in put_back) >= 20, "the crash undid too little"
        else:
            assert not put_back
    finally:
        await store.close()


@pytest.mark.timeout(120)
async def test_a_settlement_made_while_postgresql_is_down_lands_when_it_is_back(
    server: own_postgres.OwnPostgres,
) -> None:
    """The gateway's settlement fails while the server is down (the answer went out
    already); the replay applies it once the server is back, with no further call of
    the gateway's, rather than leaving the row reserved for the reaper."""
    url = await server.create_database("settle_down")
    store = await Store.open(url)
    try:
        ids = await seed(store, CAP)
        limits = (window_limit(ids[2], KEY, CAP),)
        for entry in ("d1", "d2"):
            r = await store.metering.reserve(request(ids, entry, WORST, limits))
            assert isinstance(r, Reserved)
        await asyncio.sleep(0.1)
        server.crash()
        for entry in ("d1", "d2"):
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await store.metering.settle(entry, DONE)
        server.start()
        db = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            started = time.monotonic()
            while await db.fetchval("SELECT count(*) FROM ledger WHERE status = 'settled'") < 2:
                assert time.monotonic() - started < 40, "the settlements never landed"
                await asyncio.sleep(0.1)
            counter = await db.fetchrow(
                "SELECT spent, reserved FROM counters WHERE scope = $1 AND key = $2", ids[2], KEY
            )
            assert counter is not None and (counter["spent"], counter["reserved"]) == (
                2 * ACTUAL,
                0,
            )
        finally:
            await db.close()
    finally:
        await store.close()
