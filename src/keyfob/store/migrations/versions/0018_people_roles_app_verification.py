"""people: roles, disabled people, who registered an app and whether it is verified

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-09 10:00:00.000000

Why: a hosted Keyfob serves many people. Each is an ``admin`` or a ``member`` (the owner
of an existing Keyfob becomes an admin); an admin may disable a person. Any member may
register apps, so an app records who registered it, and consent shows it as verified
only once an admin vouched for it (apps the owner registered before stay verified, as
consent said of them). At most one owner, as a rule of the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("role", sa.String(16), nullable=False, server_default="member")
    )
    op.add_column("users", sa.Column("disabled_at", sa.Float(), nullable=True))
    op.execute(
        sa.text("UPDATE users SET role = 'admin' WHERE is_owner = :yes").bindparams(yes=True)
    )
    op.create_index(
        "uq_users_one_owner",
        "users",
        ["is_owner"],
        unique=True,
        sqlite_where=sa.text("is_owner = 1"),
        postgresql_where=sa.text("is_owner"),
    )
    op.add_column("clients", sa.Column("registered_by", sa.String(32), nullable=True))
    op.add_column("clients", sa.Column("verified_at", sa.Float(), nullable=True))
    op.create_index("ix_clients_registered_by", "clients", ["registered_by"])
    # Apps registered before were registered by the owner (the only person), and consent
    # called them verified.
    op.execute(
        sa.text(
            "UPDATE clients SET verified_at = created_at, registered_by = "
            "(SELECT id FROM users WHERE is_owner = :yes ORDER BY created_at LIMIT 1) "
            "WHERE kind = 'registered'"
        ).bindparams(yes=True)
    )


def downgrade() -> None:
    op.drop_index("ix_clients_registered_by", table_name="clients")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("verified_at")
        batch.drop_column("registered_by")
    op.drop_index("uq_users_one_owner", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
        batch.drop_column("role")
