"""rotate_refresh function: hosted refresh-token rotation in one call

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-10 12:00:00.000000

Why: through SQLAlchemy a refresh grant spent the token, read the grant and stored the
successors in separate round trips and transactions (about 165 grants per server
CPU-second in the hosted benchmark). On PostgreSQL ``keyfob_rotate_refresh``
(``store/pg_oauth.sql``) does it in one call, with the checks of the SQLite server's
inline transaction (``store/sqlite_oauth.py``). No table changes; SQLite has nothing to
install.
"""

from __future__ import annotations

from importlib import resources

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def install_functions() -> None:
    """(Re)install ``pg_oauth.sql`` (``CREATE OR REPLACE``): a later change to it comes
    with a migration that calls this again."""
    from sqlalchemy.util import await_only

    sql = resources.files("keyfob.store").joinpath("pg_oauth.sql").read_text()
    # the simple query protocol runs the whole file (``$`` inside the function body)
    raw = op.get_bind().connection.driver_connection
    assert raw is not None
    await_only(raw.execute(sql))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        install_functions()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS keyfob_rotate_refresh(text, text, text, double precision, "
            "double precision, text[], text[], text[], text[], text[], text[], text[], "
            "double precision[], double precision[], double precision[], double precision[])"
        )
