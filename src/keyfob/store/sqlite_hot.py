"""The gateway's hot path on SQLite: reserve and settle as plain ``sqlite3`` transactions
run inline on the event loop.

Why not SQLAlchemy + aiosqlite here: the benchmark (docs/BENCHMARKS.md) measured about
2.2 ms of CPU per reserve+settle through them (statement compilation and a thread
handoff per statement) against about 30 us for the same transaction on a plain
connection. A thread handoff alone costs more than the whole transaction, so the
transaction runs right on the loop thread: it is a handful of indexed statements on a
WAL database with ``synchronous=NORMAL`` (no fsync at commit; a commit survives kill -9
of the process because the WAL write has reached the OS).

Two things could still block the loop, and both are kept off it:
- another process (the CLI) holding the write lock: the inline connection waits for no
  one (``busy_timeout=0``); on SQLITE_BUSY the same transaction is retried on a helper
  thread whose own connection waits up to 5 s;
- checkpoints, which fsync: automatic checkpoints are off on the inline connection and a
  helper-thread connection checkpoints every second: a passive checkpoint (copies the
  frames without blocking writers), then a RESTART one. The second matters: under
  continuous load new frames land while the passive one runs, so the WAL is never fully
  checkpointed when a writer begins and SQLite never rewinds it (measured: 1.6 GB of WAL
  and 3 MB more wal-index per 40k calls, growing without bound). RESTART holds the write
  lock only to copy those last frames; inline writes meanwhile get SQLITE_BUSY and go to
  the helper thread, queued behind it. ``journal_size_limit`` then trims the file.

The logic mirrors ``metering.MeteringRepo`` (the reference, used on PostgreSQL); the
shared tests run both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
from keyfob.store.sqlite_writeback import WriteBack
from keyfob.tokens import new_id

T = TypeVar("T")

CHECKPOINT_EVERY_S = 1.0
#: The WAL file is truncated to this size when it is rewound (bytes).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class Busy:
    """The type of ``BUSY``: the inline connection could not take the write lock."""


BUSY = Busy()


class Rollback(Exception):
    """Raised inside a transaction to roll it back and return ``value`` to the caller."""

    def __init__(self, value: object) -> None:
        super().__init__("rollback")
        self.value = value


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


class SqliteHotPath:
    def __init__(self, path: str) -> None:
        self.path = path
        self.inline = _connect(path, 0)
        self.inline.execute("PRAGMA wal_autocheckpoint=0")
        self.inline.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyfob-sqlite")
        self._helper_conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        #: Set by ``own()`` in the serving process: reserve/settle decided in memory.
        self.writeback: WriteBack | None = None

    def own(self) -> WriteBack:
        """Become the process that meters this database in memory (``sqlite_writeback``):
        takes the journal's lock (``JournalBusy`` if another server has it) and replays it."""
        if self.writeback is None:
            self.writeback = WriteBack(self.inline, self.path)
        return self.writeback

    # -- running transactions ------------------------------------------------------------

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except Rollback as signal:
            conn.execute("ROLLBACK")
            return signal.value  # type: ignore[return-value]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _on_helper(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._helper_conn is None:
                self._helper_conn = _connect(self.path, 5000)
            return self._transaction(self._helper_conn, fn)

    def try_now(self, fn: Callable[[sqlite3.Connection], T], *, metering: bool = False) -> T | Busy:
        """Run ``fn`` in one write transaction inline, or return ``BUSY`` at once when
        another connection holds the write lock (then nothing was done: use ``run``).

        Why a synchronous variant: a caller that must not be interrupted half-way (a
        settlement) otherwise needs a task and ``asyncio.shield`` around ``run``; when the
        transaction completes without suspending, no cancellation can reach it.
        ``metering``: ``fn`` only reserves or settles (it revokes nothing), so the
        write-back's token checks and the gateway's bearer cache stay valid."""
        try:
            return self._transaction(self.inline, fn)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        finally:
            if self.writeback is not None:
                # this transaction may have revoked a token or moved a window: what the
                # write-back read from SQLite is read again
                self.writeback.forget(credentials=not metering)
        return BUSY

    async def run_after_batch(
        self, fn: Callable[[sqlite3.Connection], T], *, metering: bool = False
    ) -> T:
        """Run ``fn`` in one write transaction after the write-back's batch is written,
        inline only: waiting for the lock rather than moving to the helper thread, so no
        in-memory decision can interleave with it (metering's transactional path)."""
        if self.writeback is None:
            return await self.run(fn, metering=metering)
        await self.writeback.flush_wait()
        delay = 0.001
        while True:
            done = self.try_now(fn, metering=metering)
            if done is not BUSY:
                return done  # type: ignore[return-value]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            await self.writeback.flush_wait()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn`` on the inline connection (autocommit: a WAL reader
        takes no lock a writer holds); on SQLITE_BUSY (WAL recovery by another
        process) on the helper thread instead."""
        try:
            return fn(self.inline)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._helper, self._read_on_helper, fn)

    def _read_on_helper(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._helper_conn is None:
                self._helper_conn = _connect(self.path, 5000)
            return fn(self._helper_conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, metering: bool = False) -> T:
        """Run ``fn`` in one write transaction: inline, or on the helper when busy."""
        done = self.try_now(fn, metering=metering)
        if done is not BUSY:
            return done  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._helper, self._on_helper, fn)

    # -- housekeeping --------------------------------------------------------------------

    def start(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints())

    async def _checkpoints(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            with contextlib.suppress(sqlite3.Error):  # a busy database checkpoints next time
                await loop.run_in_executor(self._helper, self._checkpoint)

    def _checkpoint(self) -> None:
        with self._lock:
            if self._helper_conn is None:
                self._helper_conn = _connect(self.path, 5000)
            self._helper_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._helper_conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    async def close(self) -> None:
        if self.writeback is not None:
            self.writeback.close()
            self.writeback = None
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        self._helper.shutdown(wait=True)
        with self._lock:
            if self._helper_conn is not None:
                self._helper_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._helper_conn.close()
                self._helper_conn = None
        self.inline.close()


# --- the transactions -------------------------------------------------------------------

_ALIVE = (
    "SELECT grants.updated_at FROM tokens JOIN grants ON grants.id = tokens.grant_id "
    "WHERE tokens.token_hash = ? AND tokens.revoked_at IS NULL AND tokens.expires_at > ? "
    "AND grants.id = ? AND grants.revoked_at IS NULL"
)
_ENSURE_WINDOW = (
    "INSERT INTO allowance_windows (grant_id, window_key, cap_micro_usd, spent_micro_usd, "
    "reserved_micro_usd) VALUES (?, ?, ?, 0, 0) ON CONFLICT DO NOTHING"
)
_HOLD_WINDOW = (
    "UPDATE allowance_windows SET reserved_micro_usd = reserved_micro_usd + ?, "
    "cap_micro_usd = ? WHERE grant_id = ? AND window_key = ? "
    "AND spent_micro_usd + reserved_micro_usd + ? <= ? "
    "RETURNING window_key, cap_micro_usd, spent_micro_usd, reserved_micro_usd"
)
_HOLD_SEEDED = _HOLD_WINDOW.replace(" RETURNING", " AND seeded_for = ? RETURNING")
_SEEDED_FOR = "SELECT seeded_for FROM allowance_windows WHERE grant_id = ? AND window_key = ?"
# The ledger rows of a window's period: every call of the grant (of one model, for a
# per-model window) reserved since the period began, as the counter would have summed
# them had it existed all along (a call counts in the window it was reserved in).
_PERIOD_SETTLED = (
    "SELECT COALESCE(SUM(COALESCE(cost_micro_usd, 0)), 0) FROM ledger "
    "WHERE grant_id = ? AND created_at >= ? AND status != 'reserved'"
)
_PERIOD_OPEN = (
    "SELECT id, reserved_micro_usd, window_keys_json FROM ledger "
    "WHERE grant_id = ? AND created_at >= ? AND status = 'reserved'"
)
_SET_WINDOW = (
    "INSERT INTO allowance_windows (grant_id, window_key, cap_micro_usd, spent_micro_usd, "
    "reserved_micro_usd, seeded_for) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (grant_id, window_key) DO UPDATE SET cap_micro_usd = excluded.cap_micro_usd, "
    "spent_micro_usd = excluded.spent_micro_usd, "
    "reserved_micro_usd = excluded.reserved_micro_usd, seeded_for = excluded.seeded_for"
)
_WINDOW = (
    "SELECT window_key, cap_micro_usd, spent_micro_usd, reserved_micro_usd "
    "FROM allowance_windows WHERE grant_id = ? AND window_key = ?"
)
_HELD = (
    "SELECT COALESCE(SUM(CASE WHEN status = 'reserved' THEN reserved_micro_usd "
    "ELSE COALESCE(cost_micro_usd, 0) END), 0), MIN(created_at) FROM ledger "
    "WHERE grant_id = ? AND created_at > ?"
)
_RECENT = (
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'reserved' THEN "
    "COALESCE(tokens_reserved, 0) ELSE COALESCE(input_tokens, 0) + "
    "COALESCE(output_tokens, 0) END), 0), MIN(created_at) FROM ledger "
    "WHERE grant_id = ? AND created_at > ?"
)
_INSERT_ENTRY = (
    "INSERT INTO ledger (id, grant_id, user_id, client_id, provider_id, model, endpoint, "
    "streamed, status, reserved_micro_usd, window_keys_json, needs_reconciliation, "
    "created_at, tokens_reserved, from_wallet, downgraded_from) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, 0, ?, ?, ?, ?)"
)
_SETTLE_ENTRY = (
    "UPDATE ledger SET status = ?, cost_micro_usd = ?, usage_source = ?, input_tokens = ?, "
    "output_tokens = ?, cached_input_tokens = ?, reasoning_tokens = ?, "
    "needs_reconciliation = ?, upstream_status = ?, error = ?, settled_at = ? "
    "WHERE id = ? AND status = 'reserved' "
    "RETURNING grant_id, reserved_micro_usd, window_keys_json, from_wallet, user_id"
)
_SETTLE_WINDOW = (
    "UPDATE allowance_windows SET reserved_micro_usd = reserved_micro_usd - ?, "
    "spent_micro_usd = spent_micro_usd + ? WHERE grant_id = ? AND window_key = ? "
    "RETURNING window_key, cap_micro_usd, spent_micro_usd, reserved_micro_usd"
)


def check_alive(conn: sqlite3.Connection, req: ReserveRequest) -> None:
    """Raise ``CredentialRevoked`` unless token and grant are live, ``GrantChanged`` when
    the grant was edited after the caller read it (``req.basis``)."""
    row = conn.execute(_ALIVE, (req.token_hash, req.now, req.grant_id)).fetchone()
    if row is None:
        raise CredentialRevoked
    if req.basis is not None and row[0] != req.basis:
        raise GrantChanged


def period_sums(
    conn: sqlite3.Connection, grant_id: str, w: WindowLimit
) -> tuple[int, list[tuple[str, int, str]]]:
    """(settled cost, open reservations as (id, amount, window keys JSON)) of the
    window's period in the ledger."""
    assert w.starts_at is not None
    model_sql, args = "", [grant_id, w.starts_at]
    if w.model is not None:
        model_sql, args = " AND model = ?", [grant_id, w.starts_at, w.model]
    settled = int(conn.execute(_PERIOD_SETTLED + model_sql, args).fetchone()[0])
    open_rows = [
        (str(r[0]), int(r[1]), str(r[2]))
        for r in conn.execute(_PERIOD_OPEN + model_sql, args).fetchall()
    ]
    return settled, open_rows


def seed_window(
    conn: sqlite3.Connection, grant_id: str, w: WindowLimit, basis: float | None
) -> tuple[int, int]:
    """Compute the window's counter from the ledger, in the caller's transaction.

    spent = the costs settled in its period, reserved = the reservations still open in
    it; each open reservation is told to settle into this window too (its
    ``window_keys_json`` gains the key), so the counter stays exact when they end.
    Returns (spent, reserved)."""
    settled, open_rows = period_sums(conn, grant_id, w)
    key = w.window_key
    for entry_id, _amount, keys in open_rows:
        listed = _keys_of(keys)
        if key not in listed:
            conn.execute(
                "UPDATE ledger SET window_keys_json = ? WHERE id = ?",
                (keys_json((*listed, key)), entry_id),
            )
    reserved = sum(amount for _id, amount, _keys in open_rows)
    conn.execute(_SET_WINDOW, (grant_id, key, w.cap_micro_usd, settled, reserved, basis))
    return settled, reserved


def hold_window(
    conn: sqlite3.Connection,
    grant_id: str,
    key: str,
    cap: int,
    amount: int,
    w: WindowLimit | None = None,
    basis: float | None = None,
    seeded: list[WindowLimit] | None = None,
) -> WindowState | None:
    """Hold ``amount`` on the window's counter row, creating the row on first use.

    The conditional UPDATE runs first: the row exists and is current on every call but
    the first of a window (or of a grant edit), so the other statements only run when
    the UPDATE matched nothing, and then the UPDATE is tried once more. A window with a
    period (``w.starts_at``) whose row is missing or was computed for another version of
    the grant (``seeded_for != basis``) is computed from the ledger first
    (``seed_window``) and appended to ``seeded``."""
    if w is None or w.starts_at is None or basis is None:
        args: tuple[object, ...] = (amount, cap, grant_id, key, amount, cap)
        row = conn.execute(_HOLD_WINDOW, args).fetchone()
        if row is None:
            if conn.execute(_ENSURE_WINDOW, (grant_id, key, cap)).rowcount != 1:
                return None  # the row was there: the cap is what refused
            row = conn.execute(_HOLD_WINDOW, args).fetchone()
        return WindowState(*row) if row else None
    args = (amount, cap, grant_id, key, amount, cap, basis)
    row = conn.execute(_HOLD_SEEDED, args).fetchone()
    if row is None:
        cur = conn.execute(_SEEDED_FOR, (grant_id, key)).fetchone()
        if cur is not None and cur[0] is not None and cur[0] == basis:
            return None  # current: the cap is what refused
        seed_window(conn, grant_id, w, basis)
        if seeded is not None:
            seeded.append(w)
        row = conn.execute(_HOLD_SEEDED, args).fetchone()
    return WindowState(*row) if row else None


def window(conn: sqlite3.Connection, grant_id: str, key: str) -> WindowState:
    row = conn.execute(_WINDOW, (grant_id, key)).fetchone()
    return WindowState(*row) if row else WindowState(key, 0, 0, 0)


def live_tokens(conn: sqlite3.Connection, pairs: set[tuple[str, str]], now: float) -> set[str]:
    """The token hashes among ``pairs`` (token hash, grant id) whose token and grant are
    both live (``metering.live_tokens`` on the inline connection)."""
    alive: set[str] = set()
    for token_hash, grant_id in pairs:
        if conn.execute(_ALIVE, (token_hash, now, grant_id)).fetchone() is not None:
            alive.add(token_hash)
    return alive


def held_since(
    conn: sqlite3.Connection, grant_id: str, since: float, model: str | None
) -> tuple[int, float | None]:
    sql, args = _HELD, [grant_id, since]
    if model is not None:
        sql, args = _HELD + " AND model = ?", [grant_id, since, model]
    used, oldest = conn.execute(sql, args).fetchone()
    return int(used), oldest


def recent(conn: sqlite3.Connection, grant_id: str, now: float) -> tuple[int, int, float | None]:
    calls, tokens, oldest = conn.execute(_RECENT, (grant_id, now - 60)).fetchone()
    return int(calls), int(tokens), oldest


def insert_entry(conn: sqlite3.Connection, values: tuple[object, ...]) -> None:
    conn.execute(_INSERT_ENTRY, values)


def settle_entry(
    conn: sqlite3.Connection, entry_id: str, values: tuple[object, ...]
) -> tuple[str, int, list[str], bool, str] | None:
    row = conn.execute(_SETTLE_ENTRY, (*values, entry_id)).fetchone()
    if row is None:
        return None
    grant_id, reserved, keys_json, from_wallet, user_id = row
    return grant_id, int(reserved), _keys_of(keys_json), bool(from_wallet), user_id


@functools.lru_cache(maxsize=1024)
def _keys_tuple(keys_json: str) -> tuple[str, ...]:
    return tuple(json.loads(keys_json))


def _keys_of(keys_json: str) -> list[str]:
    return list(_keys_tuple(keys_json))


def settle_window(
    conn: sqlite3.Connection, grant_id: str, key: str, reserved: int, cost: int
) -> WindowState | None:
    row = conn.execute(_SETTLE_WINDOW, (reserved, cost, grant_id, key)).fetchone()
    return WindowState(*row) if row else None


def hold_wallet(conn: sqlite3.Connection, user_id: str, amount: int) -> tuple[int, int] | None:
    row = conn.execute(
        "UPDATE wallets SET reserved_micro_usd = reserved_micro_usd + ? WHERE user_id = ? "
        "AND balance_micro_usd - reserved_micro_usd >= ? "
        "RETURNING balance_micro_usd, reserved_micro_usd",
        (amount, user_id, amount),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def wallet_state(conn: sqlite3.Connection, user_id: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT balance_micro_usd, reserved_micro_usd FROM wallets WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def refill_wallet(conn: sqlite3.Connection, user_id: str, key: str, now: float) -> None:
    """Top the wallet up *to* its monthly refill, once per calendar month."""
    row = conn.execute(
        "SELECT balance_micro_usd, monthly_refill_micro_usd, refilled_for FROM wallets "
        "WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None or row[1] is None or row[2] == key:
        return
    balance, refill = int(row[0]), int(row[1])
    new_balance = max(balance, refill)
    conn.execute(
        "UPDATE wallets SET balance_micro_usd = ?, refilled_for = ? WHERE user_id = ?",
        (new_balance, key, user_id),
    )
    wallet_tx(
        conn,
        user_id,
        "refill",
        new_balance - balance,
        new_balance,
        None,
        f"monthly refill {key}",
        now,
    )


def charge_wallet(
    conn: sqlite3.Connection, user_id: str, reserved: int, cost: int
) -> tuple[int, int] | None:
    row = conn.execute(
        "UPDATE wallets SET reserved_micro_usd = reserved_micro_usd - ?, "
        "balance_micro_usd = balance_micro_usd - ? WHERE user_id = ? "
        "RETURNING balance_micro_usd, reserved_micro_usd",
        (reserved, cost, user_id),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def wallet_tx(
    conn: sqlite3.Connection,
    user_id: str,
    kind: str,
    amount: int,
    balance_after: int,
    ledger_id: str | None,
    note: str | None,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO wallet_transactions (id, user_id, kind, amount_micro_usd, "
        "balance_after_micro_usd, ledger_id, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id(), user_id, kind, amount, balance_after, ledger_id, note, now),
    )


# --- whole operations (the mirror of MeteringRepo.reserve/settle) -----------------------


def reserve_tx(conn: sqlite3.Connection, req: ReserveRequest) -> Reserved | Refused:
    """Every limit checked and held, all or nothing (the caller's transaction)."""
    check_alive(conn, req)
    for lim in req.rolling:
        used, oldest = held_since(conn, req.grant_id, req.now - lim.seconds, lim.model)
        if used + req.amount_micro_usd > lim.cap_micro_usd:
            state = WindowState(f"rolling:{lim.seconds}", lim.cap_micro_usd, used, 0)
            retry = (oldest if oldest is not None else req.now) + lim.seconds
            raise Rollback(Refused(state, lim.label or state.window_key, retry))
    if req.rates is not None:
        calls, tokens, oldest = recent(conn, req.grant_id, req.now)
        retry_at = (oldest if oldest is not None else req.now) + 60
        rpm, tpm = req.rates.requests_per_minute, req.rates.tokens_per_minute
        if rpm is not None and calls + 1 > rpm:
            raise Rollback(
                Refused(
                    WindowState("requests_per_minute", rpm, calls, 0),
                    "requests per minute",
                    retry_at,
                )
            )
        if (
            tpm is not None
            and req.tokens_reserved is not None
            and (tokens + req.tokens_reserved > tpm)
        ):
            raise Rollback(
                Refused(
                    WindowState("tokens_per_minute", tpm, tokens, 0),
                    "tokens per minute",
                    retry_at if req.tokens_reserved <= tpm else None,
                )
            )
    states: list[WindowState] = []
    seeded: list[WindowLimit] = []
    for w in req.windows:
        held = hold_window(
            conn,
            req.grant_id,
            w.window_key,
            w.cap_micro_usd,
            req.amount_micro_usd,
            w,
            req.basis,
            seeded,
        )
        if held is None:
            st = window(conn, req.grant_id, w.window_key)
            state = WindowState(
                st.window_key, w.cap_micro_usd, st.spent_micro_usd, st.reserved_micro_usd
            )
            return _refuse(
                conn, req, states, seeded, Refused(state, w.label or w.window_key, w.resets_at)
            )
        states.append(held)
    if req.wallet_user_id is not None:
        if req.wallet_refill_key is not None:
            refill_wallet(conn, req.wallet_user_id, req.wallet_refill_key, req.now)
        got = hold_wallet(conn, req.wallet_user_id, req.amount_micro_usd)
        if got is None:
            balance, reserved = wallet_state(conn, req.wallet_user_id)
            refused = Refused(WindowState("wallet", balance, 0, reserved), "wallet", None)
            return _refuse(conn, req, states, seeded, refused)
        states.append(WindowState("wallet", got[0], 0, got[1]))
    insert_entry(
        conn,
        (
            req.entry_id,
            req.grant_id,
            req.user_id,
            req.client_id,
            req.provider_id,
            req.model,
            req.endpoint,
            int(req.streamed),
            req.amount_micro_usd,
            keys_json(tuple(w.window_key for w in req.windows)),
            req.now,
            req.tokens_reserved,
            int(req.wallet_user_id is not None),
            req.downgraded_from,
        ),
    )
    if seeded:
        req.seeded = seeded
    return Reserved(req.entry_id, tuple(states))


def _refuse(
    conn: sqlite3.Connection,
    req: ReserveRequest,
    held: list[WindowState],
    seeded: list[WindowLimit],
    refused: Refused,
) -> Refused:
    """Refuse: roll everything back, unless windows were computed from the ledger on
    the way; then only this call's holds are undone and the computed windows are kept
    (so a stream of refusals after a grant edit does not sum the ledger each time)."""
    if not seeded:
        raise Rollback(refused)
    for st in held:
        conn.execute(
            "UPDATE allowance_windows SET reserved_micro_usd = reserved_micro_usd - ? "
            "WHERE grant_id = ? AND window_key = ?",
            (req.amount_micro_usd, req.grant_id, st.window_key),
        )
    req.seeded = seeded
    return refused


def settle_tx(
    conn: sqlite3.Connection, entry_id: str, s: Settlement, now: float
) -> tuple[WindowState, ...]:
    found = settle_entry(
        conn,
        entry_id,
        (
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
        ),
    )
    if found is None:
        return ()
    grant_id, reserved, keys, from_wallet, user_id = found
    states = [
        st for key in keys if (st := settle_window(conn, grant_id, key, reserved, s.cost_micro_usd))
    ]
    if from_wallet:
        got = charge_wallet(conn, user_id, reserved, s.cost_micro_usd)
        if got is not None:
            states.append(WindowState("wallet", got[0], 0, got[1]))
            if s.cost_micro_usd:
                wallet_tx(conn, user_id, "charge", -s.cost_micro_usd, got[0], entry_id, None, now)
    return tuple(states)
