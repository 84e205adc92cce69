"""ledger: no foreign key from grant_id to grants on PostgreSQL

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-08 03:35:00.000000

Why: on PostgreSQL every ledger row is inserted by the reservation functions
(``store/metering/postgres.sql``), each in the statement that has just found the grant
live (``keyfob_reserve_one``'s ``live``, ``keyfob_reserve``'s outcome 1), and grants are
never deleted (a revoked grant keeps its row and its ledger). The constraint could
therefore never refuse a row there, yet its check took a share lock on the grant's row
for every reservation (``SELECT ... FOR KEY SHARE``): measured 10-15 us of PostgreSQL's
CPU and 15-25 us of a sequential call's time (``docs/BENCHMARKS.md``), and a multixact
whenever two processes reserve for one grant at once. SQLite keeps the constraint (its
writer is one process; the check is an index lookup without a lock).
``tests/test_metering_backends.py`` checks that a reservation for a grant that is not
live writes no row.
"""

from __future__ import annotations

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_grant_id_fkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key("ledger_grant_id_fkey", "ledger", "grants", ["grant_id"], ["id"])
