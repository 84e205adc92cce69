"""Write-back metering for the personal server on SQLite: reservations and settlements are
decided in memory by ``metering.rules``, made durable by one append to a journal file,
and written to SQLite in batches a few milliseconds later.

Why: with a transaction per reservation and another per settlement (``sqlite_tx``),
SQLite was about half of Keyfob's own cost per gateway call (nine statements and two
commits, ~100 us on a fast core, ~300 us on a slow one: docs/BENCHMARKS.md). Here a call
costs one ``PRAGMA data_version`` (~2 us), a dictionary lookup per counter, and two
``write(2)`` calls of one line each; the ledger rows of a whole batch go to SQLite in one
transaction, a reservation and its settlement as one row when both land in one batch.

The rules that keep the five invariants:

- **One owner.** Only the serving process decides in memory, and only while it holds an
  exclusive ``flock`` on the journal; a second server on the same database is refused at
  start (``JournalBusy``). Every other process (the CLI, scripts) uses ``sqlite_tx``.
- **No overspend.** The in-memory counters are authoritative: effective value = what
  SQLite held when read (``_base``) + what this process decided since and has not yet
  written (``_delta``). Every decision runs synchronously on the event loop, so nothing
  interleaves between check and hold. Other connections (the CLI's top-ups and
  revocations, the pages' edits) are seen through SQLite: a change of
  ``PRAGMA data_version`` drops ``_base`` and the token cache, so the next call reads them
  again. Deltas are written as increments, so they compose with what the others wrote.
- **No lost usage.** The journal line for a reservation is written before the upstream is
  called, the one for a settlement before the call returns; a ``write(2)`` that returned
  is in the kernel's page cache and survives kill -9 of the process (the durability of
  SQLite's WAL with ``synchronous=NORMAL``, which this store already chose). At start the
  owner replays the journal into SQLite idempotently; what is still open after that is a
  dead call, which the start-up reconciliation charges in full and flags.
- **Fast revocation.** The token check is cached only until ``data_version`` moves, and
  any transaction this process runs on its own connection that may revoke (a refresh
  rotation revoking a family) clears the cache too.

What is not decided in memory: computing a counter from the ledger (after a grant edit,
or a window added mid-period) and a monthly wallet refill. Both write the batch first and
then run one ``sqlite_tx`` transaction inline, without yielding between the batch and the
transaction, so no in-memory decision falls between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from keyfob.metering import pending, rules
from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    CounterState,
    GrantChanged,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
)
from keyfob.store.metering import sqlite_tx as tx
from keyfob.tokens import new_id

log = logging.getLogger("keyfob.store")

#: Beside the database file: ``keyfob.db`` -> ``keyfob.db.keyfob-journal``.
JOURNAL_SUFFIX = ".keyfob-journal"
#: A batch is written this long after its first operation (seconds): long enough to
#: gather several calls under load, short enough that readers on other connections see a
#: call a few milliseconds after it ended.
FLUSH_DELAY_S = 0.010
#: ... or at once when this many operations are waiting.
FLUSH_MAX_OPS = 512
#: The journal is emptied after a batch is written once it holds this many bytes.
JOURNAL_TRUNCATE_BYTES = 1 << 20
#: Expired time buckets are deleted at most this often (seconds).
COLLECT_EVERY_S = 60.0

_WALLET = "SELECT monthly_refill_micro_usd, refilled_for FROM wallets WHERE user_id = ?"
#: ``_base`` of a counter with no row in SQLite.
_NO_ROW = (0, 0, None, False)


class JournalBusy(RuntimeError):
    """Another process owns this database's journal: a second server on the same data."""


def owner_running(db_path: str) -> bool:
    """Whether another process serves this database now (holds its journal's lock).

    For a clear message before a second server starts; the server's own start takes the
    lock for real (``WriteBack``), so a race between two starts still ends in one owner."""
    path = db_path + JOURNAL_SUFFIX
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


@dataclass(slots=True)
class _Open:
    """A reservation decided here and not settled yet."""

    grant_id: str
    user_id: str
    amount: int
    tokens: int | None
    keys: tuple[str, ...]
    #: Its ledger row while it waits in the batch (None once written to SQLite).
    row: list[Any] | None
    created_at: float
    model: str


class WriteBack:
    def __init__(self, conn: sqlite3.Connection, db_path: str) -> None:
        """Take the journal's lock (or raise ``JournalBusy``) and replay what it holds."""
        self.conn = conn
        self.path = db_path + JOURNAL_SUFFIX
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(
                "another Keyfob server is already serving this database; stop it first"
            ) from None
        self.fd = fd
        self._version = -1
        #: Bumped whenever tokens or grants may have changed (another connection
        #: committed, or this process ran a transaction that may revoke): what the
        #: gateway caches about a bearer token is valid while this stays put.
        self.generation = 0
        #: (token hash, grant id) -> (the token's expiry, the grant's updated_at), while
        #: data_version stays put.
        self._alive: dict[tuple[str, str], tuple[float, float]] = {}
        #: (scope, key) -> (spent, reserved, seeded_for, the row exists) as SQLite held
        #: them when read; updated as batches are written.
        self._base: dict[tuple[str, str], tuple[int, int, float | None, bool]] = {}
        #: (scope, key) -> [spent, reserved, seeded_for and expiry for a new row] unwritten.
        self._delta: dict[tuple[str, str], list[Any]] = {}
        #: user id -> whether a wallet refill is due for the period key (as read).
        self._refills: dict[tuple[str, str], bool] = {}
        self._open: dict[str, _Open] = {}
        #: Ledger rows to insert, settlements of rows already in SQLite, history rows.
        self._rows: list[list[Any]] = []
        self._settles: list[tuple[str, tuple[Any, ...], list[tuple[str, str, int, int]]]] = []
        self._wallet_txs: list[tuple[Any, ...]] = []
        self._ops = 0
        self._timer: asyncio.TimerHandle | None = None
        self._collected_at = 0.0
        #: Bytes logged for the batch being gathered, and for batches already written.
        self._batch_bytes = 0
        self._logged = 0
        self.replay()
        self._thread = threading.get_ident()
        _OWNERS.setdefault(self._thread, []).append(self)

    # -- the journal ---------------------------------------------------------------------

    def _log(self, record: list[Any]) -> None:
        self._batch_bytes += os.write(self.fd, orjson.dumps(record) + b"\n")

    def replay(self) -> int:
        """Write what the journal holds into SQLite (idempotent), then empty it.

        A reservation is inserted with its holds unless its row is already there; a
        settlement is applied only to a row still ``reserved`` (``sqlite_tx.settle_tx``).
        A torn last line (the process died inside ``write``) is ignored: its call never
        went upstream (a reservation is logged before) or its row stays reserved and is
        charged in full by the start-up reconciliation."""
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        records = []
        for line in lines:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        if records:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for rec in records:
                    if rec[0] == "r":
                        row, basis, expires = rec[1], rec[2], rec[3]
                        if self.conn.execute(tx.INSERT_ROW, row).rowcount == 1:
                            self._replay_holds(row, basis, expires)
                    elif rec[0] == "s":
                        tx.settle_tx(self.conn, rec[1], tx.settlement_of(rec[2]), rec[2][10])
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        os.ftruncate(self.fd, 0)
        return len(records)

    def _replay_holds(self, row: list[Any], basis: float | None, expires: list[Any]) -> None:
        grant_id, user_id, amount, tokens = row[1], row[2], row[9], row[13]
        for key, expiry in zip(tx.keys_of(row[tx.KEYS]), expires, strict=True):
            held = rules.hold_of(rules.measure_of(key), amount, tokens)
            scope = rules.scope_of(key, grant_id, user_id)
            self.conn.execute(tx.ADD, (scope, key, 0, held, basis, expiry))

    # -- what other connections did ------------------------------------------------------

    def _check_version(self) -> None:
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self.forget()

    def current_generation(self) -> int:
        """``generation`` after noticing any commit of another connection (~2 us)."""
        self._check_version()
        return self.generation

    def forget(self, credentials: bool = True) -> None:
        """Drop everything read from SQLite (kept: what was decided here, unwritten).

        ``credentials=False`` after a metering transaction of this process: it moved
        counters but cannot have revoked anything, so the token checks stay cached."""
        self._base.clear()
        self._refills.clear()
        if credentials:
            self._alive.clear()
            self.generation += 1

    def _read_base(self, ident: tuple[str, str]) -> tuple[int, int, float | None, bool]:
        base = self._base.get(ident)
        if base is None:
            row = self.conn.execute(tx.COUNTER, ident).fetchone()
            base = (int(row[0]), int(row[1]), row[2], True) if row else _NO_ROW
            self._base[ident] = base
        return base

    def _value(self, c: Counter, basis: float | None) -> tuple[int, int] | None:
        """(spent, reserved) as decided here, or None when the ledger must compute it."""
        ident = (c.scope, c.key)
        base = self._base.get(ident)
        if base is None:
            base = self._read_base(ident)
        delta = self._delta.get(ident)
        exists, seeded_for = base[3], base[2]
        if not exists and delta is not None:
            exists, seeded_for = True, delta[2]  # created here, not yet written
        if exists:
            if not rules.usable_as_stored(c, seeded_for, basis):
                return None
        elif not rules.zero_when_missing(c, basis):
            return None
        if delta is None:
            return base[0], base[1]
        return base[0] + delta[0], base[1] + delta[1]

    def _add(
        self,
        ident: tuple[str, str],
        spent: int,
        reserved: int,
        seeded_for: float | None = None,
        expires_at: float | None = None,
    ) -> None:
        delta = self._delta.get(ident)
        if delta is None:
            self._delta[ident] = [spent, reserved, seeded_for, expires_at]
        else:
            delta[0] += spent
            delta[1] += reserved

    # -- reserve and settle --------------------------------------------------------------

    def _alive_check(self, req: ReserveRequest) -> None:
        ident = (req.token_hash, req.grant_id)
        alive = self._alive.get(ident)
        if alive is None or alive[0] <= req.now:
            alive = tx.check_alive(self.conn, req)
            self._alive[ident] = alive
        elif req.basis is not None and alive[1] != req.basis:
            raise GrantChanged

    async def reserve(self, req: ReserveRequest) -> Reserved | Refused:
        """Check and hold every limit of ``req``, all or nothing (``rules.decide``).

        Decided synchronously on the loop; it only waits when a counter must be computed
        from the ledger (or a refill applied) while another process holds SQLite's write
        lock. Raises ``CredentialRevoked`` / ``GrantChanged`` as ``sqlite_tx`` does."""
        while True:
            decided = self.reserve_now(req)
            if decided is not None:
                return decided
            await self.flush_wait()  # the write lock was taken: wait for it, then retry

    def reserve_now(self, req: ReserveRequest) -> Reserved | Refused | None:
        """``reserve`` without suspending; None when SQLite's write lock is taken and the
        ledger is needed (nothing was decided)."""
        self._check_version()
        self._alive_check(req)
        refill = req.refill
        if (
            refill is not None
            and self._refill_due(req)
            and not self._in_transaction(lambda conn: tx.refill_tx(conn, refill, req.now))
        ):
            return None
        basis = req.basis
        decided = rules.decide(req, lambda c: self._value(c, basis))
        if isinstance(decided, rules.NeedsSeed):
            if not self._seed(req, decided.counters):
                return None
            decided = rules.decide(req, lambda c: self._value(c, basis))
            assert not isinstance(decided, rules.NeedsSeed)
        if isinstance(decided, Refused):
            return decided
        keys = tuple(c.key for c, _a, _i in decided.holds)
        row = tx.ledger_row(req, tx.keys_json(keys))
        expires = [c.expires_at for c, _a, _i in decided.holds]
        self._log(["r", row, basis, expires])
        for c, amount, _i in decided.holds:
            self._add((c.scope, c.key), 0, amount, basis, c.expires_at)
        self._open[req.entry_id] = _Open(
            req.grant_id,
            req.user_id,
            req.amount_micro_usd,
            req.tokens_reserved,
            keys,
            row,
            req.now,
            req.model,
        )
        self._rows.append(row)
        self._queued()
        return Reserved(req.entry_id, decided.states)

    def _refill_due(self, req: ReserveRequest) -> bool:
        refill = req.refill
        assert refill is not None
        ident = (refill.user_id, refill.period_key)
        due = self._refills.get(ident)
        if due is None:
            row = self.conn.execute(_WALLET, (refill.user_id,)).fetchone()
            due = row is not None and row[0] is not None and row[1] != refill.period_key
            self._refills[ident] = due
        return due

    def _in_transaction(self, fn: Any) -> bool:
        """Write the batch, then run ``fn(conn)`` in one transaction, without yielding in
        between; False when the write lock is taken (nothing done)."""
        if not self.flush():
            return False
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        try:
            fn(self.conn)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self.forget(credentials=False)  # what SQLite holds moved under the cached reads
        return True

    def _seed(self, req: ReserveRequest, counters: list[Counter]) -> bool:
        """Compute ``counters`` from the ledger (``sqlite_tx.seed_counter``) after writing
        the batch, so the ledger holds every call decided here; then the open
        reservations decided here learn to settle into them too."""
        if not self._in_transaction(
            lambda conn: [tx.seed_counter(conn, c, req.basis) for c in counters]
        ):
            return False
        for c in counters:
            self._attach(c)
        return True

    def _attach(self, c: Counter) -> None:
        """Open reservations decided here settle into ``c`` too, as the ledger rows of its
        period were told by ``seed_counter``."""
        for o in self._open.values():
            if (
                o.grant_id != c.scope
                or c.starts_at is None
                or o.created_at < c.starts_at
                or (c.ends_at is not None and o.created_at >= c.ends_at)
                or (c.model is not None and o.model != c.model)
            ):
                continue
            more = rules.tagged(o.keys, c.key)
            if more is not None:
                o.keys = more
                if o.row is not None:  # not possible after a flush; kept exact anyway
                    o.row[tx.KEYS] = tx.keys_json(more)

    def settle_now(
        self, entry_id: str, s: Settlement, now: float
    ) -> tuple[CounterState, ...] | None:
        """Settle a reservation decided here; None when it was not (``sqlite_tx``)."""
        found = self._open.pop(entry_id, None)
        if found is None:
            return None
        fields = tx.settled_fields(s, now)
        self._log(["s", entry_id, fields])
        moves = rules.settle_moves(
            found.keys, found.grant_id, found.user_id, found.amount, found.tokens, s
        )
        states = []
        for scope, key, d_spent, d_reserved in moves:
            ident = (scope, key)
            self._add(ident, d_spent, d_reserved)
            base = self._read_base(ident)
            delta = self._delta[ident]
            state = CounterState(scope, key, base[0] + delta[0], base[1] + delta[1])
            states.append(state)
            if key == WALLET_KEY and s.cost_micro_usd:
                self._wallet_txs.append(
                    (
                        new_id(),
                        found.user_id,
                        "charge",
                        -s.cost_micro_usd,
                        -state.spent,
                        entry_id,
                        None,
                        now,
                    )
                )
        if found.row is not None:  # still in the batch: write it settled, as one row
            found.row[tx.STATUS] = s.status
            found.row[tx.NEEDS_RECON] = int(s.needs_reconciliation)
            found.row[tx.SETTLED_FROM :] = (*fields[1:7], *fields[8:])
        else:
            self._settles.append((entry_id, fields, moves))
        self._queued()
        return tuple(states)

    # -- writing batches -----------------------------------------------------------------

    def _queued(self) -> None:
        """Count an operation; write the batch when it is full, else schedule it.

        A failed write never fails the call that filled the batch: that call is already
        decided and in the journal, and the timer tries again."""
        self._ops += 1
        if self._ops >= FLUSH_MAX_OPS:
            if self._timer is not None:
                self._timer.cancel()
            self._on_timer()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            done = self.flush()
        except sqlite3.Error as exc:  # kept in the journal; logged, retried
            log.error("writing the metering batch failed: %s", exc)
            done = False
        if not done and self._ops:
            # the write lock is taken (the CLI, a checkpoint): the journal keeps the
            # batch durable meanwhile; try again shortly
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY_S * 5, self._on_timer)

    @property
    def pending(self) -> bool:
        return self._ops > 0

    def flush(self) -> bool:
        """Write the batch in one transaction; False when the write lock is taken (the
        batch stays, durable in the journal, and is retried)."""
        if not self._ops:
            return True
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        try:
            if self._rows:
                conn.executemany(tx.INSERT_ROW, self._rows)
            for entry_id, fields, moves in self._settles:
                if conn.execute(tx.SETTLE_ROW, (*fields, entry_id)).rowcount != 1:
                    # settled meanwhile by another connection (a reconciliation): its
                    # counters were moved there, so this settlement's moves are undone
                    for scope, key, d_spent, d_reserved in moves:
                        self._add((scope, key), -d_spent, -d_reserved)
            conn.executemany(
                tx.ADD,
                [
                    (scope, key, d[0], d[1], d[2], d[3])
                    for (scope, key), d in self._delta.items()
                    if d[0] or d[1]
                ],
            )
            if self._wallet_txs:
                conn.executemany(tx.WALLET_TX, self._wallet_txs)
            now = self._rows[-1][12] if self._rows else 0.0
            collect = now - self._collected_at > COLLECT_EVERY_S
            if collect:
                tx.collect_expired(conn, now)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._written(collect)
        return True

    def _written(self, collected: bool) -> None:
        self._logged += self._batch_bytes
        self._batch_bytes = 0
        if self._logged > JOURNAL_TRUNCATE_BYTES:
            # everything logged so far is in SQLite now; replaying it again would change
            # nothing (idempotent), so the file is only emptied once it has grown
            os.ftruncate(self.fd, 0)
            self._logged = 0
        if collected:
            self._collected_at = self._rows[-1][12]
            self._base.clear()  # some rows may be gone
        else:
            for ident, d in self._delta.items():
                base = self._base.get(ident)
                if base is not None:
                    seeded_for = base[2] if base[3] else d[2]  # as the upsert left it
                    self._base[ident] = (base[0] + d[0], base[1] + d[1], seeded_for, True)
        self._delta.clear()
        for row in self._rows:
            found = self._open.get(row[0])
            if found is not None:
                found.row = None
        self._rows.clear()
        self._settles.clear()
        self._wallet_txs.clear()
        self._ops = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def flush_wait(self, timeout_s: float = 30.0) -> None:
        """Flush, waiting for the write lock if another connection holds it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.001
        while not self.flush():
            if loop.time() > deadline:
                raise sqlite3.OperationalError("database is locked")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def close(self) -> None:
        """Write what is pending (or leave it in the journal) and release the lock."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(sqlite3.Error):
            if self.flush():
                os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        owners = _OWNERS.get(self._thread, [])
        if self in owners:
            owners.remove(self)
        if not owners:
            _OWNERS.pop(self._thread, None)


class WriteBackMetering:
    """The serving process's backend: decisions in memory (``WriteBack``), and
    ``sqlite_tx`` for what it did not decide (a call reserved before a restart, the
    reconciliation), always after its batch is written."""

    def __init__(self, wb: WriteBack, fallback: tx.SqliteMetering) -> None:
        self.wb = wb
        self.tx = fallback

    async def reserve(self, req: ReserveRequest) -> Reserved | Refused:
        return await self.wb.reserve(req)

    def settle_now(
        self, entry_id: str, s: Settlement, now: float
    ) -> tuple[CounterState, ...] | None:
        done = self.wb.settle_now(entry_id, s, now)
        if done is not None:
            return done
        if not self.wb.flush():  # the transactional path must see the whole batch
            return None
        return self.tx.settle_now(entry_id, s, now)

    async def settle(
        self, entry_id: str, s: Settlement, now: float | None = None
    ) -> tuple[CounterState, ...]:
        now = time.time() if now is None else now
        done = self.wb.settle_now(entry_id, s, now)
        if done is not None:
            return done
        await self.wb.flush_wait()
        return await self.tx.settle(entry_id, s, now)

    async def reconcile_dead(
        self, *, started_before: float | None = None, instance_ids: Sequence[str] = ()
    ) -> int:
        await self.wb.flush_wait()
        return await self.tx.reconcile_dead(
            started_before=started_before, instance_ids=instance_ids
        )

    async def collect(self, now: float) -> int:
        await self.wb.flush_wait()
        return await self.tx.collect(now)

    async def close(self) -> None:
        self.wb.close()


#: The write-backs of this process by the thread whose event loop runs them (one in a
#: server; tests may run several apps, each on its own loop thread).
_OWNERS: dict[int, list[WriteBack]] = {}


def sync_reads() -> None:
    """Write the pending batch before a read on another connection, best effort: with
    the write lock taken (a checkpoint, the CLI) the read may be a few milliseconds old.
    For synchronous callers; readers that can wait use ``synced``.

    Only the write-backs of the calling thread: a reader runs on its server's event loop,
    and a write-back must never be touched from another thread."""
    for owner in _OWNERS.get(threading.get_ident(), ()):
        if owner.pending:
            with contextlib.suppress(sqlite3.Error):
                owner.flush()


async def synced() -> None:
    """Write the pending batch before a read on another connection (usage pages, the
    allowance API, exports, wallet reads), waiting for the write lock if a checkpoint or
    the CLI holds it, so a reader in this process sees every call that ended. The
    settlements still on their way to any backend are waited for first (``pending``)."""
    await pending.settled()
    for owner in list(_OWNERS.get(threading.get_ident(), ())):
        if owner.pending:
            try:
                await owner.flush_wait(timeout_s=5.0)
            except sqlite3.Error as exc:  # still in the journal; the read is a little old
                log.warning("reading before the metering batch was written: %s", exc)
