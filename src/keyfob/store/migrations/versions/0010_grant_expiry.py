"""grants: expires_at, when a grant ends by itself (issue 15)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 13:40:00.000000

Why: an app may ask for a grant that ends (``keyfob_expires_in``), and the person sets or
changes the end on the consent page or from the CLI. NULL means never, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("expires_at")
