"""The connection budget: every process's pool must fit what PostgreSQL allows.

Why at start: a pool is opened lazily, so a deployment whose processes x (pool +
overflow) exceeds ``max_connections`` starts fine and fails under its first load spike
with "too many clients already", on every process at once. Checked once per process,
with the numbers in the message.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.settings import Settings, SettingsError
from keyfob.store.engine import PoolOptions

#: Connections kept for everything that is not a serving process (the CLI, a migration
#: job, a backup).
SPARE = 2


class ConnectionBudgetExceeded(SettingsError):
    """The deployment's pools could open more connections than the budget allows."""


async def server_budget(engine: AsyncEngine) -> int:
    """What PostgreSQL lets ordinary roles open: max_connections minus reserved slots."""
    async with engine.connect() as conn:
        names = ("max_connections", "superuser_reserved_connections", "reserved_connections")
        rows = await conn.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(names)},
        )
        found = {name: int(value) for name, value in rows}
    return found["max_connections"] - sum(v for k, v in found.items() if k != "max_connections")


def needed(settings: Settings) -> int:
    return settings.processes * PoolOptions.of(settings).most + SPARE


async def check_budget(engine: AsyncEngine, settings: Settings) -> None:
    """Raise ConnectionBudgetExceeded when the deployment could exhaust PostgreSQL."""
    if engine.dialect.name != "postgresql":
        return
    budget = settings.db_connection_budget
    source = "KEYFOB_DB_CONNECTION_BUDGET"
    if budget is None:
        budget = await server_budget(engine)
        source = "the server's max_connections minus its reserved connections"
    need = needed(settings)
    if need > budget:
        pool = PoolOptions.of(settings)
        raise ConnectionBudgetExceeded(
            f"connection budget exceeded: {settings.processes} process(es) x "
            f"({pool.size} pool + {pool.max_overflow} overflow + {pool.metering} metering) + "
            f"{SPARE} spare = {need} "
            f"connections, but the budget is {budget} ({source}); lower "
            "KEYFOB_DB_POOL_SIZE / KEYFOB_DB_MAX_OVERFLOW, or put PgBouncer in front "
            "(KEYFOB_DB_STATEMENT_CACHE_SIZE=0)"
        )
