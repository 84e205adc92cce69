"""model_limit_overrides: tool_prices_json, a person's per-use server-tool prices

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-03 10:00:00.000000

Why: a call using a server-side tool (web search) is reserved and settled at the tool's
per-use price; the shipped price may be wrong for a person's provider (a negotiated
rate, a self-hosted search that costs nothing), so it is overridable like the other
model limits. A JSON object {tool name: micro-USD per use}; NULL keeps the shipped ones.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_limit_overrides") as batch:
        batch.add_column(sa.Column("tool_prices_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_limit_overrides") as batch:
        batch.drop_column("tool_prices_json")
