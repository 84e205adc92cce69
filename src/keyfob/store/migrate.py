"""Apply Alembic migrations at start-up (or from ``keyfob migrate``), on the server's own
async engine.

Why a lock: processes of a hosted deployment start together, and each would run the same
``CREATE TABLE`` at once (PostgreSQL answers the losers with ``UniqueViolation`` on
``pg_type``). The whole upgrade runs in one transaction that first takes a
transaction-level advisory lock: the first process migrates, the others wait for its
commit and then find the schema at head. A transaction-level lock (not a session one)
is released by the commit itself, so it also works through PgBouncer's transaction
pooling, and a process killed mid-migration releases it with its connection.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: pg_advisory_xact_lock's key: "keyfob" as the first 8 bytes of an int64, a constant
#: every Keyfob process agrees on.
LOCK_KEY = int.from_bytes(b"keyfob\x00m", "big") >> 1


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head() -> str:
    """The newest revision this Keyfob ships."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def schema_state(revision: str | None) -> str:
    """``head``; ``behind`` (a known older revision, or none: run ``keyfob migrate``);
    ``ahead`` (a revision this Keyfob does not know: a newer release migrated the
    database; migrations only add, so this one keeps working during a rolling update)."""
    if revision == head():
        return "head"
    if revision is None or revision in known_revisions():
        return "behind"
    return "ahead"
