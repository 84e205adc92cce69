"""limit_overruns: calls whose upstream billed past the output limit Keyfob sent

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 13:45:00.000000

Why: such a call is charged its real cost (above its reservation); the person must be
told, and the provider marked as one that ignored the limit (``keyfob providers list``,
the dashboard). A table of its own, so the ledger's hot rows stay as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_overruns",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("grant_id", sa.String(32), nullable=True),
        sa.Column("provider_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("ledger_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reserved_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("output_limit_tokens", sa.Integer, nullable=True),
        sa.Column("output_tokens", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=True),
    )
    op.create_index("ix_limit_overruns_user", "limit_overruns", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_limit_overruns_user", table_name="limit_overruns")
    op.drop_table("limit_overruns")
