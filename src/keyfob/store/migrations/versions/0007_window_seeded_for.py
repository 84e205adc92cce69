"""allowance_windows.seeded_for: which grant edit a window counter was computed for

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:10:00.000000

Why: a window counter only sums the calls made while its key was in the grant's plan.
A new window (week -> month, a per-model cap added, another time zone) or one that was
out of the plan for a while (month -> rolling -> month) must start from what the ledger
holds for its period, not from zero or a stale sum. The counter records the grant's
``updated_at`` it was computed for; any other value (NULL included, so every existing
counter once after this upgrade) makes the next reservation compute it from the ledger.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("allowance_windows", sa.Column("seeded_for", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("allowance_windows") as batch:
        batch.drop_column("seeded_for")
