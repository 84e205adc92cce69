"""The ``keyfob`` command: serve, first-run setup, providers, apps, usage, vault."""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from keyfob.settings import Settings, UnsafeSettings

app = typer.Typer(help="Keyfob: bring your own AI account to any app.", no_args_is_help=True,
                  add_completion=False)
console = Console()
err = Console(stderr=True)

T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where Keyfob keeps its files.",
                                                envvar="KEYFOB_DATA_DIR")]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", envvar="KEYFOB_DATABASE_URL",
                                                 help="SQLAlchemy URL; SQLite file by default.")]


def settings_for(data_dir: Path | None = None, database_url: str | None = None,
                 **more: Any) -> Settings:
    return Settings.from_env().with_overrides(data_dir=data_dir, database_url=database_url,
                                              **more)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    mode: Annotated[str | None, typer.Option(help="personal (default) or hosted.")] = None,
) -> None:
    """Run the server (personal mode: loopback, SQLite in the data dir)."""
    import uvicorn

    from keyfob.server import create_app

    settings = settings_for(data_dir, database_url, host=host, port=port, mode=mode)
    try:
        application = create_app(settings)
    except UnsafeSettings as exc:
        raise fail(str(exc)) from None
    console.print(f"Keyfob on [bold]{settings.issuer}[/bold] (data: {settings.data_dir})")
    uvicorn.run(application, host=settings.host, port=settings.port, loop="uvloop",
                http="httptools", log_level=settings.log_level, access_log=False,
                server_header=False)


@app.command()
def init(
    username: Annotated[str, typer.Option(prompt=True, help="The owner's username.")],
    timezone: Annotated[str, typer.Option(help="IANA time zone for monthly windows.")] = "UTC",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create the owner account (reads the password from KEYFOB_PASSWORD or a prompt)."""
    from keyfob.accounts.passwords import WeakPassword
    from keyfob.accounts.service import AccountError, create_owner
    from keyfob.context import Keyfob

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


def main() -> None:
    app()
