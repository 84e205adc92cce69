"""model aliases and a provider preference order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("providers", schema=None) as batch_op:
        # NULL: no place chosen yet; such providers follow the ordered ones, oldest first.
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))
    op.create_table(
        "model_aliases",
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("user_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("model_aliases")
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.drop_column("position")
