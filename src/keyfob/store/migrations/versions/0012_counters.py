"""counters: every limit as counters with caps (one table for windows, buckets, wallets)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 16:00:00.000000

Why: the reserve/settle rules were written three times (SQLAlchemy, SQLite transactions,
the SQLite write-back) because rolling windows and rates were sums over ledger rows and
the wallet had its own table. As counters with caps (rolling windows and rates as time
buckets, the wallet as a counter holding minus its balance) one rule set serves every
backend, and PostgreSQL decides a reservation in one function call.

What moves: ``allowance_windows`` rows become grant-scoped counters, wallet balances
become ``wallet`` counters (spent = -balance), open ledger rows drawn from a wallet list
the ``wallet`` key, and every grant's ``updated_at`` moves to now so that each counter
(the new rolling and rate buckets included) is computed from the ledger before its next
reservation. On PostgreSQL the metering functions are installed.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("spent", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("seeded_for", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_counters_expires", "counters", ["expires_at"])
    op.add_column("ledger", sa.Column("instance_id", sa.String(64), nullable=True))
    op.execute(
        "INSERT INTO counters (scope, key, spent, reserved, seeded_for) "
        "SELECT grant_id, window_key, spent_micro_usd, reserved_micro_usd, seeded_for "
        "FROM allowance_windows"
    )
    op.execute(
        "INSERT INTO counters (scope, key, spent, reserved) "
        "SELECT 'wallet:' || user_id, 'wallet', -balance_micro_usd, reserved_micro_usd "
        "FROM wallets"
    )
    bind = op.get_bind()
    open_wallet_rows = bind.execute(
        sa.text(
            "SELECT id, window_keys_json FROM ledger WHERE status = 'reserved' AND from_wallet"
            if bind.dialect.name == "postgresql"
            else "SELECT id, window_keys_json FROM ledger WHERE status = 'reserved' "
            "AND from_wallet = 1"
        )
    ).all()
    for entry_id, keys_json in open_wallet_rows:
        keys = json.loads(keys_json)
        if "wallet" not in keys:
            bind.execute(
                sa.text("UPDATE ledger SET window_keys_json = :k WHERE id = :i"),
                {"k": json.dumps([*keys, "wallet"]), "i": entry_id},
            )
    bind.execute(
        sa.text("UPDATE grants SET updated_at = :now WHERE updated_at < :now"),
        {"now": time.time()},
    )
    op.drop_table("allowance_windows")
    with op.batch_alter_table("wallets") as batch:
        batch.drop_column("balance_micro_usd")
        batch.drop_column("reserved_micro_usd")
    if bind.dialect.name == "postgresql":
        install_functions()


def install_functions() -> None:
    """(Re)install the PostgreSQL metering functions (``CREATE OR REPLACE``): a later
    change to them comes with a migration that calls this again."""
    from keyfob.store.metering import pg_functions

    pg_functions.install()


def downgrade() -> None:
    raise NotImplementedError("0012 (counters) cannot be downgraded; restore a backup")
