"""The serving process's write-back metering (``store/metering/writeback.py``), attacked:
races on one cap, a crash between decision and batch, a second server on the same file,
revocations and writes from other connections (the CLI), and the journal's secrecy."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from keyfob.allowance.plan import bucket_width, buckets
from keyfob.metering.types import CredentialRevoked, Limit, Refused, Reserved, Settlement
from keyfob.store import Store
from keyfob.store.metering.sqlite_tx import SqliteMetering
from keyfob.store.metering.writeback import JOURNAL_SUFFIX, JournalBusy
from tests.backends import request, seed, window_limit

KEY = "month:2026-11"


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"


def die(store: Store) -> None:
    """What kill -9 leaves of a serving process, as far as SQLite and the journal can
    tell: no batch written, the journal's lock gone with its file descriptor, and nothing
    of the process's memory (its write-back leaves this thread's registry)."""
    import threading

    from keyfob.store.metering import writeback as sqlite_writeback

    wb = store.hot.writeback if store.hot else None
    assert wb is not None
    if wb._timer is not None:
        wb._timer.cancel()
    os.close(wb.fd)
    sqlite_writeback._OWNERS[threading.get_ident()].remove(wb)
    store.hot.writeback = None  # type: ignore[union-attr]
    assert store.hot is not None
    store.metering = SqliteMetering(store.hot)  # what is left can only close


async def test_racing_calls_never_exceed_the_cap_and_sqlite_agrees(tmp_path: Path) -> None:
    """300 tasks race for a cap that fits 30 worst cases; settlements land in other
    batches than their reservations (awaits between), and the counters SQLite ends with
    equal the ones decided in memory."""
    cap, worst, actual = 30_000, 1_000, 400
    store = await Store.open(url(tmp_path), serving=True)
    try:
        ids = await seed(store, cap)
        grant_id = ids[2]

        async def call(i: int) -> bool:
            await asyncio.sleep((i % 7) * 0.001)
            r = await store.metering.reserve(
                request(ids, f"e{i}", worst, (window_limit(ids[2], KEY, cap),))
            )
            if isinstance(r, Refused):
                return False
            assert isinstance(r, Reserved)
            await asyncio.sleep((i % 5) * 0.002)
            await store.metering.settle(f"e{i}", Settlement("settled", actual, "upstream"))
            return True

        admitted = sum(await asyncio.gather(*(call(i) for i in range(300))))
        state = await store.ledger.counter(grant_id, KEY)  # a reader: writes the batch first
        assert state[1] == 0
        assert state[0] == admitted * actual <= cap
        assert admitted >= cap // worst
        entries = await store.ledger.entries(grant_id=grant_id, limit=1000)
        assert len(entries) == admitted
        assert {e.status for e in entries} == {"settled"}
        assert sum(e.cost_micro_usd or 0 for e in entries) == admitted * actual
    finally:
        await store.close()


async def test_a_crash_before_the_batch_is_written_loses_nothing(tmp_path: Path) -> None:
    """Decide three calls (one settled), then die without writing the batch: the next
    server replays the journal; the settled call keeps its real cost, the open ones are
    charged in full and flagged by the start-up reconciliation."""
    cap = 10_000
    store = await Store.open(url(tmp_path), serving=True)
    ids = await seed(store, cap)
    grant_id = ids[2]
    for i in range(3):
        got = await store.metering.reserve(
            request(ids, f"c{i}", 1_000, (window_limit(ids[2], KEY, cap),))
        )
        assert isinstance(got, Reserved)
    await store.metering.settle("c0", Settlement("settled", 250, "upstream", 10, 20))
    wb = store.hot.writeback if store.hot else None
    assert wb is not None and wb.pending
    # kill -9, as far as SQLite and the journal can tell: no flush, the lock goes away
    # with the file descriptor, the connections are simply dropped
    assert wb._timer is not None
    die(store)

    again = await Store.open(url(tmp_path), serving=True)
    try:
        rows = {e.id: e for e in await again.ledger.entries(grant_id=grant_id)}
        assert set(rows) == {"c0", "c1", "c2"}
        assert (rows["c0"].status, rows["c0"].cost_micro_usd) == ("settled", 250)
        assert rows["c1"].status == rows["c2"].status == "reserved"
        state = await again.ledger.counter(grant_id, KEY)
        assert state == (250, 2_000)
        assert await again.metering.reconcile_dead(started_before=time.time()) == 2
        state = await again.ledger.counter(grant_id, KEY)
        assert state == (2_250, 0)
        rows = {e.id: e for e in await again.ledger.entries(grant_id=grant_id)}
        assert rows["c1"].needs_reconciliation and rows["c1"].cost_micro_usd == 1_000
    finally:
        await again.close()
        await store.engine.dispose()


async def test_replay_twice_changes_nothing(tmp_path: Path) -> None:
    """The journal is only emptied once it has grown: records already in SQLite are
    replayed at every start, and must be no-ops."""
    cap = 10_000
    store = await Store.open(url(tmp_path), serving=True)
    ids = await seed(store, cap)
    await store.metering.reserve(request(ids, "a", 1_000, (window_limit(ids[2], KEY, cap),)))
    await store.metering.settle("a", Settlement("settled", 300, "upstream"))
    await store.metering.reserve(request(ids, "b", 1_000, (window_limit(ids[2], KEY, cap),)))
    await store.ledger.counter(ids[2], KEY)  # writes the batch; the journal keeps it
    wb = store.hot.writeback if store.hot else None
    assert wb is not None
    assert os.path.getsize(wb.path) > 0
    await store.metering.settle("b", Settlement("settled", 100, "upstream"))
    die(store)
    await store.close()
    for _ in range(2):
        again = await Store.open(url(tmp_path), serving=True)
        state = await again.ledger.counter(ids[2], KEY)
        await again.close()
        assert state == (400, 0)


async def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    first = await Store.open(url(tmp_path), serving=True)
    try:
        with pytest.raises(JournalBusy):
            await Store.open(url(tmp_path), serving=True)
        cli = await Store.open(url(tmp_path))  # the CLI stays transactional: allowed
        await cli.close()
    finally:
        await first.close()
    again = await Store.open(url(tmp_path), serving=True)  # the lock left with the owner
    await again.close()


async def test_journal_is_private(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path), serving=True)
    await store.close()
    mode = stat.S_IMODE(os.stat(str(tmp_path / "k.db") + JOURNAL_SUFFIX).st_mode)
    assert mode == 0o600


async def test_revocation_by_another_process_refuses_the_next_call(tmp_path: Path) -> None:
    """The token check is cached, but only until another connection commits: a revoke
    from the CLI refuses the very next reservation, not a second later."""
    cap = 10_000
    store = await Store.open(url(tmp_path), serving=True)
    cli = await Store.open(url(tmp_path))
    try:
        ids = await seed(store, cap)
        assert isinstance(
            await store.metering.reserve(request(ids, "x1", 10, (window_limit(ids[2], KEY, cap),))),
            Reserved,
        )
        await cli.grants.revoke(ids[2])
        with pytest.raises(CredentialRevoked):
            await store.metering.reserve(request(ids, "x2", 10, (window_limit(ids[2], KEY, cap),)))
    finally:
        await cli.close()
        await store.close()


async def test_changes_from_other_connections_are_counted(tmp_path: Path) -> None:
    """Another connection moves the same window (a transactional reservation, as a
    rolling-limit policy takes): the in-memory decision includes it at once."""
    cap = 5_000
    store = await Store.open(url(tmp_path), serving=True)
    cli = await Store.open(url(tmp_path))
    try:
        ids = await seed(store, cap)
        assert isinstance(
            await store.metering.reserve(
                request(ids, "m1", 2_000, (window_limit(ids[2], KEY, cap),))
            ),
            Reserved,
        )
        await store.ledger.counter(ids[2], KEY)  # batch written
        other = await cli.metering.reserve(
            request(ids, "o1", 2_000, (window_limit(ids[2], KEY, cap),))
        )
        assert isinstance(other, Reserved)
        # 2,000 + 2,000 held: a third 2,000 does not fit
        third = await store.metering.reserve(
            request(ids, "m2", 2_000, (window_limit(ids[2], KEY, cap),))
        )
        assert isinstance(third, Refused)
        assert third.window.reserved_micro_usd == 4_000
    finally:
        await cli.close()
        await store.close()


async def test_counters_computed_from_the_ledger_see_the_batch(tmp_path: Path) -> None:
    """A limit added mid-period is computed from the ledger (rows of its period) before
    it holds anything: the batch is written first, so the calls decided in memory and
    not yet in SQLite count against it, and the calls still in flight settle into it."""
    cap = 100_000
    store = await Store.open(url(tmp_path), serving=True)
    try:
        ids = await seed(store, cap)
        month = (window_limit(ids[2], KEY, cap),)
        for i in range(3):
            got = await store.metering.reserve(request(ids, f"f{i}", 1_000, month))
            assert isinstance(got, Reserved)
        now = time.time()
        span = 3600
        rolling = Limit(
            f"rolling:{span}",
            "rolling 1h",
            3_500,
            buckets(ids[2], f"roll:{span}:", span, now, None),
            "rolling",
            span_s=span,
            bucket_s=bucket_width(span),
        )
        basis = now + 1  # a grant version newer than every bucket: each is computed
        async with store.engine.begin() as conn:  # the grant edited (as the CLI does)
            await conn.execute(
                text("UPDATE grants SET updated_at = :b WHERE id = :g"), {"b": basis, "g": ids[2]}
            )
        got = await store.metering.reserve(
            request(ids, "r1", 1_000, (*month, rolling), now=now, basis=basis)
        )
        assert isinstance(got, Refused)  # 3,000 held in memory + 1,000 > 3,500
        await store.metering.settle("f0", Settlement("settled", 0, "upstream"))
        got = await store.metering.reserve(
            request(ids, "r2", 1_000, (*month, rolling), now=now, basis=basis)
        )
        assert isinstance(got, Reserved)
        await store.metering.settle("r2", Settlement("settled", 500, "upstream"))
        assert await store.ledger.counter(ids[2], KEY) == (500, 2_000)
        values = await store.ledger.values([rolling], basis)
        assert sum(v[0] for v in values[0]) == 500  # f0 settled at 0, r2 at 500
        assert sum(v[1] for v in values[0]) == 2_000  # f1 and f2 still in flight
    finally:
        await store.close()


def test_keyfob_serve_refuses_a_second_server_with_a_clear_message(tmp_path: Path) -> None:
    """The CLI says why, instead of a traceback from the server's start-up."""
    import subprocess
    import sys

    from keyfob.store.metering.writeback import WriteBack

    db = tmp_path / "keyfob.db"
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    owner = WriteBack(conn, str(db))  # as a running server holds it
    try:
        env = {**os.environ, "KEYFOB_DATA_DIR": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-m", "keyfob", "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1
        assert "already serving" in out.stderr + out.stdout
    finally:
        owner.close()
        conn.close()


async def test_a_row_settled_elsewhere_is_not_settled_twice(tmp_path: Path) -> None:
    """Another connection settles a row this process wrote (a reconciliation): when this
    process's own settlement of it reaches SQLite it matches nothing, and its move of the
    window is undone, so the window counts the call once."""
    cap = 10_000
    store = await Store.open(url(tmp_path), serving=True)
    cli = await Store.open(url(tmp_path))
    try:
        ids = await seed(store, cap)
        got = await store.metering.reserve(
            request(ids, "d1", 1_000, (window_limit(ids[2], KEY, cap),))
        )
        assert isinstance(got, Reserved)
        await store.ledger.counter(ids[2], KEY)  # the reservation is in SQLite now
        await cli.metering.settle(
            "d1", Settlement("charged_reservation", 1_000, "reservation", needs_reconciliation=True)
        )
        await store.metering.settle("d1", Settlement("settled", 300, "upstream"))
        state = await store.ledger.counter(ids[2], KEY)
        assert state == (1_000, 0)
        [row] = await store.ledger.entries(grant_id=ids[2])
        assert (row.status, row.cost_micro_usd) == ("charged_reservation", 1_000)
    finally:
        await cli.close()
        await store.close()


async def test_a_held_write_lock_delays_the_batch_but_never_a_call(tmp_path: Path) -> None:
    """The CLI holds SQLite's write lock while calls keep coming (more than a full batch):
    every call is decided at once, nothing fails, and the rows land once the lock goes."""
    import sqlite3

    cap = 10**9
    store = await Store.open(url(tmp_path), serving=True)
    try:
        ids = await seed(store, cap)
        blocker = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            for i in range(600):  # above FLUSH_MAX_OPS reservations + settlements
                got = await store.metering.reserve(
                    request(ids, f"b{i}", 10, (window_limit(ids[2], KEY, cap),))
                )
                assert isinstance(got, Reserved)
                await store.metering.settle(f"b{i}", Settlement("settled", 5, "upstream"))
            wb = store.hot.writeback if store.hot else None
            assert wb is not None and wb.pending
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await asyncio.sleep(0.2)  # the retry timer writes the batch
        assert not wb.pending
        state = await store.ledger.counter(ids[2], KEY)
        assert state == (600 * 5, 0)
        assert len(await store.ledger.entries(grant_id=ids[2], limit=1000)) == 600
    finally:
        await store.close()


async def test_readers_write_only_their_own_threads_batch(tmp_path: Path) -> None:
    """``sync_reads`` runs on a server's event loop; a write-back living on another
    thread's loop (tests run several apps) must never be touched from here."""
    import threading

    from keyfob.store.metering.writeback import sync_reads

    cap = 10_000
    store = await Store.open(url(tmp_path), serving=True)
    try:
        ids = await seed(store, cap)
        await store.metering.reserve(request(ids, "t1", 10, (window_limit(ids[2], KEY, cap),)))
        wb = store.hot.writeback if store.hot else None
        assert wb is not None and wb.pending
        other = threading.Thread(target=sync_reads)
        other.start()
        other.join()
        assert wb.pending  # another thread's reader left it alone
        sync_reads()
        assert not wb.pending
    finally:
        await store.close()
