"""metering functions: the common case (one limit of one money counter) in one statement

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-12 10:00:00.000000

Why: ``keyfob_reserve_one``, ``keyfob_reserve_one_durably`` and ``keyfob_settle_one``
(``store/metering/postgres.sql``) do what ``keyfob_reserve`` and ``keyfob_settle`` do for
a call under a single calendar cap without their loops over arrays. Nothing but the
PostgreSQL functions changes: they are installed again.
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from keyfob.store.metering import pg_functions

        pg_functions.install()


def downgrade() -> None:
    """The functions stay (unused by an older Keyfob)."""
