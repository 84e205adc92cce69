"""metering functions: a settlement's commit does not wait for the WAL flush

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-11 10:00:00.000000

Why: ``keyfob_settle`` now sets ``synchronous_commit`` off for its own transaction (the
reservation before it stays a flushed commit); see ``store/metering/postgres.sql``.
Nothing but the PostgreSQL functions changes: they are installed again.
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from keyfob.store.metering import pg_functions

        pg_functions.install()


def downgrade() -> None:
    """The functions stay (the previous ones differ only in the commit mode)."""
