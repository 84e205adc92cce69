"""Installing the PostgreSQL metering functions (``postgres.sql``) from a migration.

Why a module of its own: the functions are ``CREATE OR REPLACE``d whole, by the
migration that introduced them (0012) and again by each migration that changes them, so
every migration runs the file as it is now, and one place knows how to run it.
"""

from __future__ import annotations

from importlib import resources

from alembic import op


def install() -> None:
    """(Re)install every function in ``postgres.sql`` on the migration's connection."""
    from sqlalchemy.util import await_only

    sql = resources.files("keyfob.store.metering").joinpath("postgres.sql").read_text()
    # asyncpg's simple query protocol runs the whole file (several statements, with
    # ``:`` and ``$`` inside function bodies that a bound statement would misread)
    raw = op.get_bind().connection.driver_connection
    assert raw is not None
    await_only(raw.execute(sql))
