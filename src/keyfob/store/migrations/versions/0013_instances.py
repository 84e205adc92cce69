"""instances: serving processes and their heartbeats (the reaper of dead reservations)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 16:30:00.000000

Why: in hosted mode many processes share the ledger. A process killed mid-call leaves its
reservations held; each process now writes its id on its reservations and a heartbeat
here, so the others release a dead peer's reservations within seconds and a restart
with the same id releases its own at once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    op.create_index(
        "ix_ledger_reserved_instance",
        "ledger",
        ["instance_id"],
        sqlite_where=sa.text("status = 'reserved'"),
        postgresql_where=sa.text("status = 'reserved'"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_reserved_instance", table_name="ledger")
    op.drop_table("instances")
