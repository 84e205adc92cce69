"""metering functions: a common-case reservation put back after a crash of PostgreSQL

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-08 05:40:00.000000

Why: with ``db_reservation_durability = commit`` (the default) a common-case
reservation's commit no longer waits for the WAL flush before its call goes upstream,
so a crash of PostgreSQL itself in the next few hundred milliseconds can undo it; the
gateway that made it puts it back with ``keyfob_restore_one``
(``store/metering/postgres.sql``, ``pg_replays.py``). Nothing but the PostgreSQL
functions changes: they are installed again.
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from keyfob.store.metering import pg_functions

        pg_functions.install()


def downgrade() -> None:
    """The functions stay (unused by an older Keyfob)."""
