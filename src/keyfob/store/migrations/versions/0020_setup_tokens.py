"""setup_tokens: one-time links that create the first owner of a hosted server

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-10 10:00:00.000000

Why: a hosted deployment runs several processes behind a load balancer; a setup token
each process invents is unknown to the others (the link's two requests may reach two
processes), and an open /setup lets whoever loads it first own the server. Tokens live in
the database (as SHA-256), so any process accepts one, and each is used once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "setup_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("setup_tokens")
