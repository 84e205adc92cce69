"""ledger: a partial index on open reservations instead of an index on every status

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:00:00.000000

Why: the only query that selects ledger rows by status looks for open reservations
(``status = 'reserved'``, the start-up reconciliation); every other status was indexed
for nothing, one more index entry per row written. Rows written settled (most of them,
since the serving process writes a reservation and its settlement as one row) now touch
no status index at all. SQLite and PostgreSQL both support partial indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ledger_status", table_name="ledger")
    op.create_index(
        "ix_ledger_reserved",
        "ledger",
        ["created_at"],
        sqlite_where=sa.text("status = 'reserved'"),
        postgresql_where=sa.text("status = 'reserved'"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_reserved", table_name="ledger")
    op.create_index("ix_ledger_status", "ledger", ["status"])
