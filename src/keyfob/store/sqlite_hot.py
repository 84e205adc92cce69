"""The gateway's hot path on SQLite: plain ``sqlite3`` transactions run inline on the
event loop (metering's ``store/metering/sqlite_tx.py``, the OAuth rotation, bearer
lookups), with a helper thread for when another process holds the write lock.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")

CHECKPOINT_EVERY_S = 1.0
#: The WAL file is truncated to this size when it is rewound (bytes).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class WriteBackHook(Protocol):
    """What the hot path needs of the write-back (which imports this module)."""

    generation: int

    def forget(self, credentials: bool = True) -> None: ...

    def current_generation(self) -> int: ...


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
        #: The serving process's write-back (``store.metering.writeback``), set when the
        #: store opens for serving: told to forget what it read when a transaction here
        #: may have changed it.
        self.writeback: WriteBackHook | None = None

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
        self.writeback = None  # closed by its metering backend (the store closes it first)
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


# --- bearer lookups on the inline connection --------------------------------------------

_ALIVE = (
    "SELECT grants.updated_at FROM tokens JOIN grants ON grants.id = tokens.grant_id "
    "WHERE tokens.token_hash = ? AND tokens.revoked_at IS NULL AND tokens.expires_at > ? "
    "AND grants.id = ? AND grants.revoked_at IS NULL"
)


def live_tokens(conn: sqlite3.Connection, pairs: set[tuple[str, str]], now: float) -> set[str]:
    """The token hashes among ``pairs`` (token hash, grant id) whose token and grant are
    both live (``metering.live_tokens`` on the inline connection)."""
    alive: set[str] = set()
    for token_hash, grant_id in pairs:
        if conn.execute(_ALIVE, (token_hash, now, grant_id)).fetchone() is not None:
            alive.add(token_hash)
    return alive
