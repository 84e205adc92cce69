"""``keyfob migrate`` and ``keyfob setup-link``: the deployment's own steps.

``migrate`` is what a Kubernetes Job or a deploy script runs before the servers start
(``KEYFOB_MIGRATE_ON_START=false`` then); it takes the same advisory lock as a starting
server, so running it beside them is safe. ``setup-link`` makes the one-time link that
creates the first owner of a hosted server (``keyfob users add --admin`` is the other way).
"""

from __future__ import annotations

import typer

from keyfob.cli.common import DatabaseUrl, DataDir, console, fail, run, settings_for
from keyfob.settings import SettingsError


def migrate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations (under a PostgreSQL advisory lock) and say where
    the schema stands."""
    from keyfob.deploy import StartRefused, open_checked
    from keyfob.store.migrate import current_revision, head, schema_state

    settings = settings_for(data_dir, database_url, migrate_on_start=True)

    async def go() -> str | None:
        kf = await open_checked(settings)
        try:
            return await current_revision(kf.store.engine)
        finally:
            await kf.close()

    try:
        revision = run(go)
    except (StartRefused, SettingsError) as exc:
        raise fail(str(exc)) from None
    state = schema_state(revision)
    console.print(f"Database at revision {revision} ({state}; this Keyfob's head: {head()}).")


def setup_link(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    public_url: str | None = typer.Option(
        None, "--public-url", help="The server's public URL (default: KEYFOB_PUBLIC_URL)."
    ),
) -> None:
    """Print a one-time link (valid one hour) that creates a hosted server's first owner."""
    from keyfob.deploy import StartRefused, open_checked

    settings = settings_for(data_dir, database_url, public_url=public_url)
    if settings.is_sqlite:
        raise fail("a personal server prints its setup link when it starts (or use keyfob init)")

    async def go() -> str | None:
        kf = await open_checked(settings)
        try:
            if await kf.store.users.owner() is not None:
                return None
            return await kf.store.setup_tokens.mint()
        finally:
            await kf.close()

    try:
        token = run(go)
    except (StartRefused, SettingsError) as exc:
        raise fail(str(exc)) from None
    if token is None:
        raise fail("this server has an owner already; sign in at /login")
    print(f"{settings.issuer}/setup?token={token}")  # stdout alone
