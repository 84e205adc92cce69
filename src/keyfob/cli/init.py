"""``keyfob init``: the owner account, from the terminal."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer

from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    console,
    fail,
    run,
    settings_for,
)
from keyfob.context import Keyfob


def init(
    username: Annotated[str, typer.Option(prompt=True, help="The owner's username.")],
    timezone: Annotated[str, typer.Option(help="IANA time zone for monthly windows.")] = "UTC",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create the owner account (reads the password from KEYFOB_PASSWORD or a prompt)."""
    from keyfob.accounts.passwords import WeakPassword
    from keyfob.accounts.service import AccountError, create_owner

    password = os.environ.get("KEYFOB_PASSWORD") or getpass.getpass("Password: ")

    async def go() -> None:
        kf = await Keyfob.open(settings_for(data_dir, database_url))
        try:
            user = await create_owner(kf.store, username, password, timezone)
        finally:
            await kf.close()
        console.print(f"Owner [bold]{user.username}[/bold] created.")

    try:
        run(go)
    except (AccountError, WeakPassword) as exc:
        raise fail(str(exc)) from None
