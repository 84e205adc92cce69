"""web_sessions: server-side dashboard sessions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 13:50:00.000000

Why: sessions were signed cookies valid for 14 days with no server-side state, so logout
did not end them (the old cookie still opened the dashboard). The cookie now carries a
random session id; this table holds its SHA-256, the owner and when it was last used
(idle expiry), and deleting rows ends sessions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.String(length=32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_web_sessions_user", "web_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_web_sessions_user", table_name="web_sessions")
    op.drop_table("web_sessions")
