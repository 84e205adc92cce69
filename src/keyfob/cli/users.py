"""``keyfob users ...`` (people, roles, password links, invites) and the ``--user NAME``
option of every command that acts for a person (providers, models, apps, usage, wallet,
dev-token). Installed on the ``keyfob`` command by ``install()`` at the end of
``keyfob/cli/__init__.py``, after every other command.

Why ``--user`` is added here rather than in each command: the commands find their person
through ``cli.common.owner_of``, which reads the ``ACTING`` name set here; wrapping the
registered commands gives each the same option (shown in its ``--help``) without touching
their bodies, and a command added later gets it by being listed in ``ACTING_GROUPS``.
Whoever runs the CLI has the database and the master key, so the CLI is an admin's tool;
``--user`` only picks whose objects a command reads and changes, never widens what it may
see.

Password links and invite codes are printed once on stdout (never a log) and stored as
SHA-256 only.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from typer.models import CommandInfo

from keyfob.cli.apps import app as apps_app
from keyfob.cli.common import ACTING as _ACTING
from keyfob.cli.common import DatabaseUrl, DataDir, console, err, fail
from keyfob.cli.common import with_kf as _with_kf
from keyfob.cli.models import app as models_app
from keyfob.cli.providers import app as providers_app
from keyfob.cli.wallet import app as wallet_app

users_app = typer.Typer(
    help="People, roles, password links and invite codes.", no_args_is_help=True
)
invite_app = typer.Typer(help="Invite codes for signup mode `invite`.", no_args_is_help=True)
users_app.add_typer(invite_app, name="invite")


UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="NAME",
        help="Act for this person (default: the owner).",
    ),
]

#: The command groups whose commands act for a person, and the commands outside them.
ACTING_GROUPS = (providers_app, models_app, apps_app, wallet_app)
ACTING_COMMANDS = ("usage", "dev-token")
NOT_ACTING = ("kinds",)  # `keyfob providers kinds` lists adapters, nobody's objects


def _acting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a ``--user`` option that sets the person for the call."""
    signature = inspect.signature(fn, eval_str=True)
    hints = typing.get_type_hints(fn, include_extras=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, user: str | None = None, **kwargs: Any) -> Any:
        token = _ACTING.set(user)
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTING.reset(token)

    extra = inspect.Parameter(
        "user", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=UserOption
    )
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), extra]
    )
    wrapper.__annotations__ = {**hints, "user": UserOption}
    return wrapper


def _name(info: CommandInfo) -> str:
    if info.name:
        return info.name
    callback = info.callback
    assert callback is not None
    return callback.__name__.replace("_", "-")


def acting_commands(app: typer.Typer) -> list[tuple[str, CommandInfo]]:
    """Every command that acts for a person, as (``group command``, info)."""
    found: list[tuple[str, CommandInfo]] = []
    names = {id(t.typer_instance): t.name for t in app.registered_groups}
    for group in ACTING_GROUPS:
        for info in group.registered_commands:
            if _name(info) not in NOT_ACTING:
                found.append((f"{names[id(group)]} {_name(info)}", info))
    for info in app.registered_commands:
        if _name(info) in ACTING_COMMANDS:
            found.append((_name(info), info))
    return found


def install(app: typer.Typer) -> None:
    """Add ``keyfob users`` to the root command and give every command that acts for a
    person its ``--user`` option (call once every command is registered)."""
    app.add_typer(users_app, name="users")
    for _label, info in acting_commands(app):
        assert info.callback is not None
        info.callback = _acting(info.callback)


# --- keyfob users ---------------------------------------------------------------------


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _named(kf: Any, name: str) -> Any:
    found = await kf.store.users.by_username(name)
    if found is None:
        raise fail(f"nobody named {name!r} (see `keyfob users list`)")
    return found


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="The person's username.")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin (default: a member).")] = False,
    timezone: Annotated[str, typer.Option(help="IANA time zone for their windows.")] = "UTC",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a person. With KEYFOB_PASSWORD set it is their password; otherwise a one-time
    link to set it is printed (give it to them; it works once, within a day). The first
    admin of a new hosted database becomes its owner, which closes /setup."""
    from keyfob.accounts.passwords import WeakPassword
    from keyfob.accounts.people import AccountError, add_person, password_link

    password = os.environ.get("KEYFOB_PASSWORD") or None

    async def body(kf: Any) -> tuple[Any, str | None]:
        made = await add_person(
            kf.store, username, password, role="admin" if admin else "member", timezone=timezone
        )
        if password is not None:
            return made, None
        link = await password_link(kf.store, kf.settings.issuer, made, None)
        return made, link.url

    try:
        made, url = _with_kf(data_dir, database_url, body)
    except (AccountError, WeakPassword) as exc:
        raise fail(str(exc)) from None
    owner = " (the owner)" if made.is_owner else ""
    err.print(f"Added {made.username}, {made.role}{owner}.")
    if url:
        err.print("Their one-time link to set a password (shown only now, valid for a day):")
        print(url)  # stdout alone


@users_app.command("list")
def users_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Everyone: role, state, apps allowed, providers linked (never their keys)."""
    from rich.table import Table

    async def body(kf: Any) -> tuple[list[Any], dict[str, tuple[int, int]]]:
        return await kf.store.users.list(), await kf.store.people.counts_by_person()

    people, counts = _with_kf(data_dir, database_url, body)
    table = Table("username", "role", "state", "apps allowed", "providers", "since")
    for u in people:
        grants, providers = counts.get(u.id, (0, 0))
        state = "active" if u.active else f"disabled {_iso(u.disabled_at)}"
        table.add_row(
            u.username + (" (owner)" if u.is_owner else ""),
            u.role,
            state,
            str(grants),
            str(providers),
            _iso(u.created_at),
        )
    console.print(table)


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="The person to disable.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Disable a person: no login, sessions ended, every grant and token revoked (refused
    from the next call). Enabling them later does not bring the grants back."""
    from keyfob.accounts.people import AccountError, disable

    async def body(kf: Any) -> int:
        return await disable(kf.store, await _named(kf, username))

    try:
        revoked = _with_kf(data_dir, database_url, body)
    except AccountError as exc:
        raise fail(str(exc)) from None
    console.print(f"Disabled {username}: {revoked} grant(s) revoked, sessions ended.")


@users_app.command("enable")
def users_enable(
    username: Annotated[str, typer.Argument(help="The person to enable.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let a disabled person log in again (they allow their apps again themselves)."""
    from keyfob.accounts.people import enable

    async def body(kf: Any) -> None:
        await enable(kf.store, await _named(kf, username))

    _with_kf(data_dir, database_url, body)
    console.print(f"Enabled {username}.")


@users_app.command("reset-password")
def users_reset_password(
    username: Annotated[str, typer.Argument(help="Whose password to reset.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a one-time link that sets a new password (valid a day; older links stop
    working). The current password works until the link is used."""
    from keyfob.accounts.people import password_link

    async def body(kf: Any) -> str:
        found = await _named(kf, username)
        if not found.active:
            raise fail(f"{username} is disabled; enable them first")
        return (await password_link(kf.store, kf.settings.issuer, found, None)).url

    url = _with_kf(data_dir, database_url, body)
    err.print(f"One-time link for {username} (shown only now, valid for a day):")
    print(url)


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument(help="The person.")],
    role: Annotated[str, typer.Argument(help="admin or member.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a person an admin or a member (the last active admin stays one)."""
    from keyfob.accounts.people import AccountError, set_role

    async def body(kf: Any) -> None:
        await set_role(kf.store, await _named(kf, username), role)

    try:
        _with_kf(data_dir, database_url, body)
    except AccountError as exc:
        raise fail(str(exc)) from None
    console.print(f"{username} is now {role}.")


@users_app.command("logout")
def users_logout(
    username: Annotated[str, typer.Argument(help="Whose sessions to end.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Log a person out everywhere (every dashboard session ends)."""
    from keyfob.accounts.people import log_out_everywhere

    async def body(kf: Any) -> int:
        return await log_out_everywhere(kf.store, await _named(kf, username))

    ended = _with_kf(data_dir, database_url, body)
    console.print(f"Ended {ended} session(s) of {username}.")


@invite_app.command("create")
def invite_create(
    uses: Annotated[int, typer.Option("--uses", min=1, help="How many people may use it.")] = 1,
    expires: Annotated[
        str, typer.Option("--expires", help="Lasts this long (12h, 7d, 2w) or 'never'.")
    ] = "7d",
    note: Annotated[str, typer.Option(help="Who it is for (shown to admins).")] = "",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make an invite code; its signup link is printed once on stdout."""
    from keyfob.accounts.people import AccountError, new_invite
    from keyfob.cli.apps import parse_duration

    try:
        ttl = None if expires.strip().lower() == "never" else parse_duration(expires)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Any) -> tuple[Any, str, str, str]:
        invite, code = await new_invite(kf.store, None, uses=uses, ttl_s=ttl, note=note)
        return invite, code, kf.settings.issuer, kf.settings.signup

    try:
        invite, code, issuer, signup = _with_kf(data_dir, database_url, body)
    except AccountError as exc:
        raise fail(str(exc)) from None
    err.print(
        f"Invite {invite.id} for {invite.max_uses} person(s), until {_iso(invite.expires_at)}. "
        "Shown only now; Keyfob keeps only its hash."
    )
    if signup != "invite":
        err.print(
            f"[yellow]Signup mode is {signup}: the code works when the server runs with "
            "KEYFOB_SIGNUP=invite.[/yellow]"
        )
    print(f"{issuer}/signup?code={code}")


@invite_app.command("list")
def invite_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Invites: uses, expiry, state (never their codes)."""
    import time

    from rich.table import Table

    async def body(kf: Any) -> tuple[list[Any], dict[str, str]]:
        names = {u.id: u.username for u in await kf.store.users.list()}
        return await kf.store.people.invites(), names

    invites, names = _with_kf(data_dir, database_url, body)
    now = time.time()
    table = Table("id", "made", "by", "note", "used", "ends", "state")
    for i in invites:
        state = (
            "revoked"
            if i.revoked_at
            else "usable"
            if i.usable(now)
            else "used up"
            if i.uses >= i.max_uses
            else "expired"
        )
        table.add_row(
            i.id,
            _iso(i.created_at),
            names.get(i.created_by or "", "the CLI"),
            i.note or "",
            f"{i.uses}/{i.max_uses}",
            _iso(i.expires_at),
            state,
        )
    console.print(table)


@invite_app.command("revoke")
def invite_revoke(
    invite_id: Annotated[str, typer.Argument(metavar="ID", help="The invite's id.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an invite: nobody can sign up with it any more."""

    async def body(kf: Any) -> bool:
        done: bool = await kf.store.people.revoke_invite(invite_id)
        return done

    if not _with_kf(data_dir, database_url, body):
        raise fail(f"no usable invite {invite_id!r}")
    console.print(f"Invite {invite_id} revoked.")
