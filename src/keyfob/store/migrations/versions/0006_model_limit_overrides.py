"""model_limit_overrides: a person's own context window, output maximum and image rule

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 13:30:00.000000

Why: the worst case reserved before a call needs the model's context window (content
billed by reference), its output maximum (the default output limit) and its image rule.
Keyfob ships them as data (``pricing/model_limits.toml``); a person whose model is not
there, or whose provider differs, sets their own (``keyfob providers limits``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_limit_overrides",
        sa.Column("provider_id", sa.String(32), sa.ForeignKey("providers.id"), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("context_window_tokens", sa.BigInteger, nullable=True),
        sa.Column("max_output_tokens", sa.BigInteger, nullable=True),
        sa.Column("image_rule", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_limit_overrides")
