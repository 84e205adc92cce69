"""metering functions: several calls' common-case settlements and reservations at once

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-08 02:30:00.000000

Why: ``keyfob_meter_many`` (``store/metering/postgres.sql``) applies the settlements and
reservations a process has queued while its earlier round trips were on their way in
one round trip and one transaction (``store/metering/pg_batch.py``). Nothing but the
PostgreSQL functions changes: they are installed again.
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from keyfob.store.metering import pg_functions

        pg_functions.install()


def downgrade() -> None:
    """The functions stay (unused by an older Keyfob)."""
