"""dashboard: refused calls, and the person's default cap and session epoch

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:30:00.000000

Why: the dashboard shows recent refused calls and why; a refusal writes no ledger row
(no money moved), so it gets its own small table, coalesced per grant and limit so a
client hammering a closed allowance adds a counter, not rows. ``users.default_cap_micro_usd``
is what consent pre-fills when an app suggests nothing; ``users.session_epoch`` ends every
session of a person at once ("log out everywhere", a password change).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refusals",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("grant_id", sa.String(32), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("limit_label", sa.String(255), nullable=False),
        sa.Column("window_key", sa.String(255), nullable=False),
        sa.Column("needed_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("left_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("retry_at", sa.Float, nullable=True),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_index("ix_refusals_user_last", "refusals", ["user_id", "last_at"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("default_cap_micro_usd", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_epoch")
        batch.drop_column("default_cap_micro_usd")
    op.drop_index("ix_refusals_user_last", table_name="refusals")
    op.drop_table("refusals")
