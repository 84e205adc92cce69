"""What every ``keyfob`` command shares: the consoles, the data dir and database
options, and opening the store for one command."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from keyfob.settings import Settings

if TYPE_CHECKING:
    from keyfob.context import Keyfob
    from keyfob.store.records import Grant, User

console = Console()
err = Console(stderr=True)

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where Keyfob keeps its files.", envvar="KEYFOB_DATA_DIR"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="KEYFOB_DATABASE_URL",
        help="SQLAlchemy URL; SQLite file by default.",
    ),
]


def settings_for(
    data_dir: Path | None = None, database_url: str | None = None, **more: Any
) -> Settings:
    return Settings.from_env().with_overrides(data_dir=data_dir, database_url=database_url, **more)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    return typer.Exit(code)


async def open_kf(data_dir: Path | None, database_url: str | None) -> Keyfob:
    from keyfob.context import Keyfob

    return await Keyfob.open(settings_for(data_dir, database_url))


#: The person a command acts for (``--user NAME``, set by ``keyfob.cli.users``).
ACTING: contextvars.ContextVar[str | None] = contextvars.ContextVar("keyfob_user", default=None)


async def owner_of(kf: Keyfob) -> User:
    """The person the command acts for: ``--user NAME``, else the owner."""
    name = ACTING.get()
    if name is None:
        owner = await kf.store.users.owner()
        if owner is None:
            raise fail("no owner yet: run `keyfob init` (or `keyfob users add NAME --admin`)")
        return owner
    found = await kf.store.users.by_username(name)
    if found is None:
        raise fail(f"nobody named {name!r} (see `keyfob users list`)")
    if not found.active:
        raise fail(f"{name} is disabled; `keyfob users enable {name}` first")
    return found


async def apps_of(kf: Keyfob, app_ref: str) -> list[Any]:
    """The person's own apps (registered or granted) named or with client_id ``app_ref``."""
    owner = await owner_of(kf)
    mine = await kf.store.clients.visible_to(owner.id)
    return [c for c in mine if app_ref in (c.id, c.name)]


def with_kf(
    data_dir: Path | None, database_url: str | None, body: Callable[[Keyfob], Awaitable[T]]
) -> T:
    """Open the store, run ``body``, close it: one command's whole life."""

    async def go() -> T:
        kf = await open_kf(data_dir, database_url)
        try:
            return await body(kf)
        finally:
            await kf.close()

    return run(go)


async def grant_of(kf: Keyfob, app_ref: str) -> Grant:
    """The person's live grant to the app named or identified by ``app_ref``."""
    owner = await owner_of(kf)
    for c in await apps_of(kf, app_ref):
        if app_ref in (c.id, c.name):
            grant = await kf.store.grants.active_for(owner.id, c.id)
            if grant is not None:
                return grant
    raise fail(f"no active grant for app {app_ref!r}")
