"""Engine creation: one writer connection for SQLite, a pool for PostgreSQL.

SQLite allows one writer at a time; rather than let concurrent transactions fail with
"database is locked", personal mode funnels every statement through a single connection
(Datasette's write-thread idea, via aiosqlite's own thread). WAL keeps readers of the
file (the CLI, a backup) from blocking it, and synchronous=NORMAL in WAL mode still makes
each commit durable against a process kill (only an OS crash can lose the last commits).

PostgreSQL: a pool per process, sized by settings (``KEYFOB_DB_POOL_SIZE``, ``_MAX_OVERFLOW``)
so a deployment can budget its connections (``store/budget.py``). Behind PgBouncer in
transaction pooling mode a connection may change between transactions, so asyncpg's
prepared statements (named per connection) must be off: ``statement_cache_size=0``, and
SQLAlchemy's own prepared statements get unique names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool


@dataclass(frozen=True)
class PoolOptions:
    size: int = 5
    max_overflow: int = 5
    timeout_s: float = 10.0
    #: asyncpg's prepared-statement cache; 0 behind PgBouncer (transaction pooling).
    statement_cache_size: int = 100
    #: What a common-case reservation waits for before its call goes upstream: "commit"
    #: or "disk" (``PostgresMetering.durability``).
    reservation_durability: str = "commit"

    @classmethod
    def of(cls, settings: Any) -> PoolOptions:
        return cls(
            settings.db_pool_size,
            settings.db_max_overflow,
            settings.db_pool_timeout_s,
            settings.db_statement_cache_size,
            settings.db_reservation_durability,
        )

    @property
    def metering(self) -> int:
        """Connections of the metering pool (asyncpg, ``store/metering/postgres.py``):
        as many as the main pool keeps, since every gateway call reserves and settles."""
        return self.size

    @property
    def most(self) -> int:
        """Connections one process may hold at once (both pools)."""
        return self.size + self.max_overflow + self.metering


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _unique_statement_name() -> str:
    return f"__kf_{uuid.uuid4().hex}__"


def create_engine(url: str, pool: PoolOptions | None = None) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    pool = pool or PoolOptions()
    connect_args: dict[str, Any] = {
        "statement_cache_size": pool.statement_cache_size,  # asyncpg's own
        "prepared_statement_cache_size": pool.statement_cache_size,  # SQLAlchemy's
    }
    if pool.statement_cache_size == 0:
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    return create_async_engine(
        url,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.timeout_s,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
