"""device codes, client kinds, longer client ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Client ID Metadata Documents use an https URL as client_id: 128 characters is short.
_CLIENT_ID_COLUMNS = (
    ("clients", "id"),
    ("grants", "client_id"),
    ("auth_codes", "client_id"),
    ("tokens", "client_id"),
    ("ledger", "client_id"),
)


def upgrade() -> None:
    op.create_table(
        "device_codes",
        sa.Column("device_code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.Text(), server_default="", nullable=False),
        sa.Column("resource", sa.Text(), nullable=True),
        sa.Column("request_json", sa.Text(), server_default="{}", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("last_polled_at", sa.Float(), nullable=True),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("grant_id", sa.String(length=32), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("device_code_hash"),
        sa.UniqueConstraint("user_code_hash", name="uq_device_codes_user_code"),
    )
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=32), server_default="registered", nullable=False)
        )
        batch_op.add_column(sa.Column("metadata_json", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("fetched_at", sa.Float(), nullable=True))

    if op.get_bind().dialect.name != "sqlite":  # SQLite does not enforce VARCHAR lengths
        for table, column in _CLIENT_ID_COLUMNS:
            op.alter_column(
                table,
                column,
                type_=sa.String(length=255),
                existing_type=sa.String(length=128),
                existing_nullable=False,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column in _CLIENT_ID_COLUMNS:
            op.alter_column(
                table,
                column,
                type_=sa.String(length=128),
                existing_type=sa.String(length=255),
                existing_nullable=False,
            )
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("fetched_at")
        batch_op.drop_column("metadata_json")
        batch_op.drop_column("kind")
    op.drop_table("device_codes")
