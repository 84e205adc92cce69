"""The metering backend's PostgreSQL connections: a bounded free list, not asyncpg's pool.

Why not ``asyncpg.Pool``: on every release the pool sends a reset query (``RESET ALL``,
unlisten, advisory-lock release...), a second round trip after each reservation and
each settlement: measured about 230 us of Keyfob's CPU and as much of PostgreSQL's per
gateway call (docs/BENCHMARKS.md), and the pool's own bookkeeping about 50 us more.
Metering needs none of what the reset undoes: it runs single statements (a function
call each) or one short transaction, opens no cursors, takes no session advisory locks,
never LISTENs and never SETs. A connection that fails, or comes back inside a
transaction, is closed rather than reused.

A connection found lost is reported (``on_lost``): the backend then replays its recent
settlements, whose commits may not have been flushed (``pg_replays.Replays``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

#: What says the connection itself is gone (not a refusal of the statement).
LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    # a connection broken mid-protocol (asyncpg's own state machine gives up on it)
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


class Connections:
    def __init__(
        self,
        dsn: str,
        max_size: int,
        statement_cache_size: int,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.dsn = dsn
        self.statement_cache_size = statement_cache_size
        self.on_lost = on_lost
        self._free: deque[Any] = deque()
        self._room = asyncio.Semaphore(max(1, max_size))
        self._closed = False
        #: ids of connections this pool is ending itself (not a loss).
        self._ending: set[int] = set()

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(self.dsn, statement_cache_size=self.statement_cache_size)
        conn.add_termination_listener(self._ended)
        return conn

    def _ended(self, conn: Any) -> None:
        """A connection ended: by the server (a crash, a restart, a terminated backend:
        reported at once, not at its next use) or by this pool (closed on purpose)."""
        if id(conn) in self._ending:
            self._ending.discard(id(conn))
        elif not self._closed:
            self.on_lost()

    def _end(self, conn: Any) -> None:
        self._ending.add(id(conn))
        conn.terminate()

    async def warm(self, n: int) -> None:
        """Open ``n`` connections now (start-up: an unreachable database fails here)."""
        for _ in range(n):
            self._free.append(await self._connect())

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._room:
            conn = None
            while self._free:
                candidate = self._free.pop()
                if not candidate.is_closed():
                    conn = candidate
                    break
                self.on_lost()  # closed while idle: the server went away
            if conn is None:
                try:
                    conn = await self._connect()
                except LOST:
                    self.on_lost()
                    raise
            reusable = False
            try:
                yield conn
                reusable = True
            except asyncpg.exceptions.PostgresError as exc:
                # the statement was refused (a deadlock, a constraint): the connection is
                # fine, unless the error is the connection's own
                reusable = not isinstance(exc, LOST)
                if not reusable:
                    self.on_lost()
                raise
            except LOST:
                self.on_lost()
                raise
            finally:
                # anything else (lost, cancelled mid-statement) leaves it unknown: closed
                if reusable and not self._closed and not conn.is_in_transaction():
                    self._free.append(conn)
                elif not conn.is_closed():
                    self._end(conn)  # a loss, if it is one, was reported above

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return str(await conn.execute(sql, *args))

    async def close(self) -> None:
        self._closed = True
        while self._free:
            with contextlib.suppress(Exception):
                await self._free.pop().close(timeout=5)


#: A transaction PostgreSQL rolled back to break a lock cycle or a serialisation
#: conflict is tried again this many times in all (it changed nothing).
ATTEMPTS = 4

T = TypeVar("T")


CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


async def retried(fn: Callable[[], Awaitable[T]], *, lost_too: bool = False) -> T:
    """``fn()``, again after a deadlock or serialisation failure: PostgreSQL rolled the
    whole statement or transaction back, so trying again can neither lose nor double a
    hold or a charge. The lock order makes these rare; this makes them invisible.
    ``lost_too``: also after a lost connection, for what is safe to repeat whether or
    not it committed (a settlement)."""
    retry = (*CONFLICTS, *LOST) if lost_too else CONFLICTS
    for attempt in range(ATTEMPTS):
        try:
            return await fn()
        except retry:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")
