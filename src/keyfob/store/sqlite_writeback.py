"""Write-back metering for the personal server on SQLite: reservations and settlements are
decided in memory, made durable by one append to a journal file, and written to SQLite in
batches a couple of milliseconds later.

Why: with a transaction per reservation and another per settlement (``sqlite_hot``), SQLite
was about half of Keyfob's own cost per gateway call (nine statements and two commits,
~100 us on a fast core, ~300 us on a slow one: docs/BENCHMARKS.md), which alone put the
throughput target of issue #6 out of reach. Here a call costs one ``PRAGMA data_version``
(~2 us), a dictionary lookup per limit, and two ``write(2)`` calls of one line each (~1 us
each); the ledger rows of a whole batch go to SQLite in one transaction, a reservation and
its settlement as one row when both land in the same batch.

The rules that keep the five invariants:

- **One owner.** Only the serving process decides in memory, and only while it holds an
  exclusive ``flock`` on the journal; a second server on the same database is refused at
  start (``JournalBusy``). Every other process (the CLI, scripts) uses the transactional
  path and never reserves anyway.
- **No overspend.** The in-memory counters are authoritative: effective state = what
  SQLite held when read (``_base``) + what this process has decided since and not yet
  written (``_delta``). Every decision runs synchronously on the event loop, so there is no
  interleaving between check and hold. Other connections (the CLI's top-ups and
  revocations, the web pages' SQLAlchemy writes) can only be seen through SQLite: a change
  of ``PRAGMA data_version`` (any other connection committed) drops ``_base`` and the
  token cache, so the next call re-reads them. Deltas are written as increments, so they
  compose with whatever the others wrote.
- **No lost usage.** The journal line for a reservation is written before the upstream is
  called, the one for a settlement before the call returns; a ``write(2)`` that returned is
  in the kernel's page cache and survives kill -9 of the process (the same durability as
  SQLite's WAL with ``synchronous=NORMAL``, which this store already chose). At start the
  owner replays the journal into SQLite idempotently (a row already written is skipped, a
  settlement only moves a row out of ``reserved``); what is still open after that is a
  dead call, which the server's start-up reconciliation charges in full and flags.
- **Fast revocation.** The token check is cached only until ``data_version`` moves, and
  any transaction this process runs on its own connection (a refresh-token rotation that
  revokes a family) clears the cache too.

What stays on the transactional path (``sqlite_hot``): policies with rolling windows, rate
limits or the wallet (their checks are sums over ledger rows or another table's rows). The
batch is written first, so those transactions see everything decided here; afterwards
``_base`` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

import orjson

from keyfob.store.metering_types import (
    CredentialRevoked,
    GrantChanged,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
    WindowLimit,
    keys_json,
)
from keyfob.store.records import WindowState

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

_ALIVE_UNTIL = (
    "SELECT tokens.expires_at, grants.updated_at FROM tokens "
    "JOIN grants ON grants.id = tokens.grant_id "
    "WHERE tokens.token_hash = ? AND tokens.revoked_at IS NULL AND tokens.expires_at > ? "
    "AND grants.id = ? AND grants.revoked_at IS NULL"
)
_WINDOW = (
    "SELECT spent_micro_usd, reserved_micro_usd, seeded_for FROM allowance_windows "
    "WHERE grant_id = ? AND window_key = ?"
)
#: ``_base`` of a window with no row in SQLite (its ``seeded_for`` matches nothing).
_NO_ROW = -1.0
_COLUMNS = (
    "id, grant_id, user_id, client_id, provider_id, model, endpoint, streamed, status, "
    "reserved_micro_usd, window_keys_json, needs_reconciliation, created_at, "
    "tokens_reserved, from_wallet, downgraded_from, cost_micro_usd, usage_source, "
    "input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, upstream_status, "
    "error, settled_at"
)
_INSERT_ROW = f"INSERT OR IGNORE INTO ledger ({_COLUMNS}) VALUES ({', '.join('?' * 25)})"  # noqa: S608 (constants only)
_SETTLE_ROW = (
    "UPDATE ledger SET status = ?, cost_micro_usd = ?, usage_source = ?, input_tokens = ?, "
    "output_tokens = ?, cached_input_tokens = ?, reasoning_tokens = ?, "
    "needs_reconciliation = ?, upstream_status = ?, error = ?, settled_at = ? "
    "WHERE id = ? AND status = 'reserved'"
)
_ADD_WINDOW = (
    "INSERT INTO allowance_windows (grant_id, window_key, cap_micro_usd, spent_micro_usd, "
    "reserved_micro_usd) VALUES (?, ?, ?, ?, ?) ON CONFLICT (grant_id, window_key) DO UPDATE "
    "SET cap_micro_usd = excluded.cap_micro_usd, "
    "spent_micro_usd = spent_micro_usd + excluded.spent_micro_usd, "
    "reserved_micro_usd = reserved_micro_usd + excluded.reserved_micro_usd"
)

#: Index of the settlement fields in a ledger row (``_COLUMNS`` order).
_STATUS, _NEEDS_RECON = 8, 11
_SETTLED_FROM = 16  # cost_micro_usd .. settled_at


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


class NotHere:
    """The type of ``NOT_HERE``: the operation belongs on the transactional path."""


NOT_HERE = NotHere()


@dataclass(slots=True)
class _Open:
    """A reservation decided here and not settled yet."""

    grant_id: str
    amount: int
    keys: tuple[str, ...]
    caps: tuple[int, ...]
    #: Its ledger row while it waits in the batch (None once written to SQLite).
    row: list[Any] | None
    created_at: float = 0.0
    model: str = ""


def _settled_fields(s: Settlement, now: float) -> tuple[Any, ...]:
    return (
        s.cost_micro_usd,
        s.usage_source,
        s.input_tokens,
        s.output_tokens,
        s.cached_input_tokens,
        s.reasoning_tokens,
        s.upstream_status,
        s.error,
        now,
    )


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
        #: (grant id, window key) -> [spent, reserved, seeded_for] as SQLite held them
        #: when read, plus what was written since.
        self._base: dict[tuple[str, str], list[Any]] = {}
        #: (grant id, window key) -> [cap, spent delta, reserved delta] not yet written.
        self._delta: dict[tuple[str, str], list[int]] = {}
        self._open: dict[str, _Open] = {}
        #: id(plan's window list) -> (the list, the grant version its counters were found
        #: computed for): a list checked once is not checked again until ``forget``. The
        #: entry keeps the list alive, so its ``id`` is not reused meanwhile.
        self._verified: dict[int, tuple[list[WindowLimit], float]] = {}
        self._shapes: dict[
            int, tuple[list[WindowLimit], tuple[str, ...], tuple[int, ...], str]
        ] = {}
        #: Ledger rows to insert and settlements of rows already in SQLite, in order.
        self._rows: list[list[Any]] = []
        self._settles: list[
            tuple[str, tuple[Any, ...], tuple[str, ...], tuple[int, ...], int, int, str]
        ] = []
        self._ops = 0
        self._timer: asyncio.TimerHandle | None = None
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
        settlement is applied only to a row still ``reserved`` (``sqlite_hot.settle_tx``).
        A torn last line (the process died inside ``write``) is ignored: its call never
        went upstream (a reservation is logged before) or its row stays reserved and is
        charged in full by the start-up reconciliation."""
        from keyfob.store import sqlite_hot

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
                        row, caps = rec[1], rec[2]
                        if self.conn.execute(_INSERT_ROW, row).rowcount == 1:
                            keys = orjson.loads(row[10])
                            for key, cap in zip(keys, caps, strict=True):
                                self.conn.execute(_ADD_WINDOW, (row[1], key, cap, 0, row[9]))
                    elif rec[0] == "s":
                        entry_id, fields = rec[1], rec[2]
                        s = Settlement(
                            status=fields[0],
                            cost_micro_usd=fields[1],
                            usage_source=fields[2],
                            input_tokens=fields[3],
                            output_tokens=fields[4],
                            cached_input_tokens=fields[5],
                            reasoning_tokens=fields[6],
                            needs_reconciliation=bool(fields[7]),
                            upstream_status=fields[8],
                            error=fields[9],
                        )
                        sqlite_hot.settle_tx(self.conn, entry_id, s, fields[10])
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        os.ftruncate(self.fd, 0)
        return len(records)

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
        windows but cannot have revoked anything, so the token checks stay cached."""
        self._base.clear()
        self._verified.clear()
        if credentials:
            self._alive.clear()
            self.generation += 1

    def _read_base(self, ident: tuple[str, str]) -> list[Any]:
        base = self._base.get(ident)
        if base is None:
            row = self.conn.execute(_WINDOW, ident).fetchone()
            base = [int(row[0]), int(row[1]), row[2]] if row else [0, 0, _NO_ROW]
            self._base[ident] = base
        return base

    def _state(self, grant_id: str, key: str, cap: int) -> list[int]:
        """[spent, reserved] as decided here: SQLite's row + the unwritten delta."""
        ident = (grant_id, key)
        base = self._base.get(ident)
        if base is None:
            base = self._read_base(ident)
        delta = self._delta.get(ident)
        if delta is None:
            return [base[0], base[1]]
        return [base[0] + delta[1], base[1] + delta[2]]

    def _add(self, grant_id: str, key: str, cap: int, spent: int, reserved: int) -> None:
        ident = (grant_id, key)
        delta = self._delta.get(ident)
        if delta is None:
            self._delta[ident] = [cap, spent, reserved]
        else:
            delta[0] = cap
            delta[1] += spent
            delta[2] += reserved

    # -- reserve and settle --------------------------------------------------------------

    def _shape(self, windows: list[WindowLimit]) -> tuple[tuple[str, ...], tuple[int, ...], str]:
        """(keys, caps, keys as JSON) of a list of limits, memoised per list object.

        The allowance service hands over the same list for every call of a grant and
        model until a window resets (its plan cache), so this is a dictionary hit; the
        entry keeps the list alive, so its ``id`` cannot be reused by another list."""
        found = self._shapes.get(id(windows))
        if found is not None and found[0] is windows:
            return found[1], found[2], found[3]
        keys = tuple(w.window_key for w in windows)
        caps = tuple(w.cap_micro_usd for w in windows)
        if len(self._shapes) >= 4096:
            self._shapes.clear()
        self._shapes[id(windows)] = (windows, keys, caps, keys_json(keys))
        return keys, caps, keys_json(keys)

    def reserve(self, req: ReserveRequest) -> Reserved | Refused | NotHere:
        """Check and hold every window of ``req`` in memory, all or nothing.

        ``NOT_HERE`` for the policies the transactional path keeps (rolling windows, rate
        limits, wallet). Raises ``CredentialRevoked`` as ``sqlite_hot.reserve_tx`` does."""
        if req.rolling or req.rates is not None or req.wallet_user_id is not None:
            return NOT_HERE
        self._check_version()
        ident = (req.token_hash, req.grant_id)
        alive = self._alive.get(ident)
        if alive is None or alive[0] <= req.now:
            cur = self.conn.execute(_ALIVE_UNTIL, (req.token_hash, req.now, req.grant_id))
            found = cur.fetchone()
            if found is None:
                raise CredentialRevoked
            self._alive[ident] = alive = (float(found[0]), found[1])
        basis = req.basis
        if basis is not None:
            if alive[1] != basis:
                raise GrantChanged
            windows = req.windows
            seen = self._verified.get(id(windows))
            if seen is None or seen[0] is not windows or seen[1] != basis:
                stale = [
                    w
                    for w in windows
                    if w.starts_at is not None
                    and self._read_base((req.grant_id, w.window_key))[2] != basis
                ]
                if stale and not self._seed(req, stale):
                    return NOT_HERE  # the write lock is taken: the transactional path waits
                if len(self._verified) >= 4096:
                    self._verified.clear()
                self._verified[id(windows)] = (windows, basis)
        amount = req.amount_micro_usd
        states: list[WindowState] = []
        for w in req.windows:
            spent, reserved = self._state(req.grant_id, w.window_key, w.cap_micro_usd)
            if spent + reserved + amount > w.cap_micro_usd:
                state = WindowState(w.window_key, w.cap_micro_usd, spent, reserved)
                return Refused(state, w.label or w.window_key, w.resets_at)
            states.append(WindowState(w.window_key, w.cap_micro_usd, spent, reserved + amount))
        keys, caps, keys_json = self._shape(req.windows)
        row: list[Any] = [
            req.entry_id,
            req.grant_id,
            req.user_id,
            req.client_id,
            req.provider_id,
            req.model,
            req.endpoint,
            int(req.streamed),
            "reserved",
            amount,
            keys_json,
            0,
            req.now,
            req.tokens_reserved,
            0,
            req.downgraded_from,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]
        self._log(["r", row, caps])
        for key, cap in zip(keys, caps, strict=True):
            self._add(req.grant_id, key, cap, 0, amount)
        self._open[req.entry_id] = _Open(req.grant_id, amount, keys, caps, row, req.now, req.model)
        self._rows.append(row)
        self._queued()
        return Reserved(req.entry_id, tuple(states))

    def _seed(self, req: ReserveRequest, windows: list[WindowLimit]) -> bool:
        """Compute ``windows`` from the ledger (``sqlite_hot.seed_window``) in one
        transaction, after writing the batch so the ledger holds every call decided
        here; False when the write lock is taken (nothing done).

        Synchronous from the flush to the last in-memory update: no decision of this
        process can fall between the ledger's sums and the counters built from them."""
        from keyfob.store import sqlite_hot

        if not self.flush():
            return False
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        try:
            sums = [sqlite_hot.seed_window(self.conn, req.grant_id, w, req.basis) for w in windows]
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        for w, (spent, reserved) in zip(windows, sums, strict=True):
            self._base[(req.grant_id, w.window_key)] = [spent, reserved, req.basis]
        self.attach(req.grant_id, windows)
        return True

    def attach(self, grant_id: str, windows: list[WindowLimit]) -> None:
        """Open reservations decided here settle into ``windows`` too, as the ledger rows
        of their period were told by ``seed_window`` (a new window counts the calls in
        flight in its period as reserved, so their settlement must move it)."""
        for o in self._open.values():
            if o.grant_id != grant_id:
                continue
            for w in windows:
                if (
                    w.starts_at is None
                    or o.created_at < w.starts_at
                    or (w.model is not None and o.model != w.model)
                    or w.window_key in o.keys
                ):
                    continue
                o.keys = (*o.keys, w.window_key)
                o.caps = (*o.caps, w.cap_micro_usd)
                if o.row is not None:  # not possible after a flush; kept exact anyway
                    o.row[10] = keys_json(o.keys)

    def settle(self, entry_id: str, s: Settlement, now: float) -> tuple[WindowState, ...] | None:
        """Settle a reservation decided here; None when it was not (transactional path)."""
        found = self._open.pop(entry_id, None)
        if found is None:
            return None
        fields = _settled_fields(s, now)
        self._log(
            [
                "s",
                entry_id,
                [
                    s.status,
                    s.cost_micro_usd,
                    s.usage_source,
                    s.input_tokens,
                    s.output_tokens,
                    s.cached_input_tokens,
                    s.reasoning_tokens,
                    int(s.needs_reconciliation),
                    s.upstream_status,
                    s.error,
                    now,
                ],
            ]
        )
        cost = s.cost_micro_usd
        states = []
        for key, cap in zip(found.keys, found.caps, strict=True):
            self._add(found.grant_id, key, cap, cost, -found.amount)
            spent, reserved = self._state(found.grant_id, key, cap)
            states.append(WindowState(key, cap, spent, reserved))
        if found.row is not None:  # still in the batch: write it settled, as one row
            found.row[_STATUS] = s.status
            found.row[_NEEDS_RECON] = int(s.needs_reconciliation)
            found.row[_SETTLED_FROM:] = fields
        else:
            self._settles.append(
                (
                    entry_id,
                    (s.status, *fields[:6], int(s.needs_reconciliation), *fields[6:]),
                    found.keys,
                    found.caps,
                    found.amount,
                    cost,
                    found.grant_id,
                )
            )
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
                conn.executemany(_INSERT_ROW, self._rows)
            for entry_id, values, keys, caps, amount, cost, grant_id in self._settles:
                if conn.execute(_SETTLE_ROW, (*values, entry_id)).rowcount != 1:
                    # settled meanwhile by another connection (a reconciliation): its
                    # windows were moved there, so this settlement's move is undone
                    for key, cap in zip(keys, caps, strict=True):
                        self._add(grant_id, key, cap, -cost, amount)
            conn.executemany(
                _ADD_WINDOW,
                [
                    (grant_id, key, d[0], d[1], d[2])
                    for (grant_id, key), d in self._delta.items()
                    if d[1] or d[2]
                ],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._logged += self._batch_bytes
        self._batch_bytes = 0
        if self._logged > JOURNAL_TRUNCATE_BYTES:
            # everything logged so far is in SQLite now; replaying it again would change
            # nothing (idempotent), so the file is only emptied once it has grown
            os.ftruncate(self.fd, 0)
            self._logged = 0
        for ident, d in self._delta.items():
            base = self._base.get(ident)
            if base is not None:
                base[0] += d[1]
                base[1] += d[2]
        self._delta.clear()
        for row in self._rows:
            found = self._open.get(row[0])
            if found is not None:
                found.row = None
        self._rows.clear()
        self._settles.clear()
        self._ops = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

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


#: The write-backs of this process by the thread whose event loop runs them (one in a
#: server; tests may run several apps, each on its own loop thread).
_OWNERS: dict[int, list[WriteBack]] = {}


def sync_reads() -> None:
    """Write the pending batch before a read on another connection (usage pages, the
    allowance API, exports), so a reader in this process sees every call that ended.

    Only the write-backs of the calling thread: a reader runs on its server's event loop,
    and a write-back must never be touched from another thread. Best effort: with the
    write lock taken the read is at most a few milliseconds old."""
    for owner in _OWNERS.get(threading.get_ident(), ()):
        if owner.pending:
            with contextlib.suppress(sqlite3.Error):
                owner.flush()
