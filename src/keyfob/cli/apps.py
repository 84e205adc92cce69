"""``keyfob apps ...``: register apps, list and revoke grants, when a grant ends
(``apps policy`` is in ``apps_policy.py``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    apps_of,
    console,
    err,
    fail,
    grant_of,
    owner_of,
    with_kf,
)
from keyfob.context import Keyfob

app = typer.Typer(help="Register apps and manage what they were granted.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds (ValueError otherwise)."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h, 7d or 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_instant(text: str) -> float:
    """An ISO 8601 date or date-time; UTC when it names no zone."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def granted_label(expires_at: float | None) -> str:
    """``keyfob apps list``'s "granted" column: yes, until when, or ended."""
    import time

    if expires_at is None:
        return "yes"
    if expires_at <= time.time():
        return "ended " + datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M")
    return "until " + datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command("add")
def apps_add(
    name: Annotated[str, typer.Argument(help="The app's name, shown on the consent screen.")],
    redirect_uris: Annotated[
        list[str], typer.Option("--redirect-uri", "-r", help="An exact redirect URI (repeatable).")
    ],
    confidential: Annotated[
        bool,
        typer.Option(
            "--confidential",
            help="A server-side app with a client secret (default: public, PKCE only).",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register an app. A confidential app's secret is printed once and stored hashed."""
    from keyfob.oauth.clients import register_app

    async def body(kf: Keyfob) -> tuple[Any, str | None]:
        return await register_app(
            kf.store,
            name=name,
            redirect_uris=list(redirect_uris),
            public=not confidential,
            registered_by=await owner_of(kf),
        )

    try:
        client, secret = with_kf(data_dir, database_url, body)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"client_id: {client.id}")
    if secret:
        console.print(f"client_secret: {secret}")
        err.print("[yellow]The secret is shown only now; Keyfob keeps only its hash.[/yellow]")


@app.command("list")
def apps_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List apps and what each was granted: every limit with its own window, spent, left."""
    from rich.table import Table

    from keyfob.money import usd_summary

    async def body(kf: Keyfob) -> list[tuple[Any, ...]]:
        owner = await owner_of(kf)
        grants = {g.client_id: g for g in await kf.store.grants.list(owner.id)}
        rows = []
        for c in await kf.store.clients.visible_to(owner.id):
            g = grants.get(c.id)
            rows.append((c, g, await kf.allowance.limits(g) if g is not None else []))
        return rows

    table = Table("app", "client_id", "type", "granted", "limit", "cap", "spent", "left", "models")
    for c, g, states in with_kf(data_dir, database_url, body):
        kind = "public" if c.is_public else "confidential"
        if g is None:
            table.add_row(c.name, c.id, kind, "no", "-", "-", "-", "-", "")
            continue
        models = ", ".join(g.models) or "none"
        granted = granted_label(g.expires_at)
        if not states:
            table.add_row(c.name, c.id, kind, granted, "none", "-", "-", "-", models)
        for i, st in enumerate(states):
            first = i == 0
            table.add_row(
                c.name if first else "",
                c.id if first else "",
                kind if first else "",
                granted if first else "",
                st.label,
                f"{usd_summary(st.cap_micro_usd)} / {st.label}",
                usd_summary(st.spent_micro_usd + st.reserved_micro_usd),
                usd_summary(st.left_micro_usd),
                models if first else "",
            )
    console.print(table)


@app.command("revoke")
def apps_revoke(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """End the app's grant: its tokens stop working at once."""

    async def body(kf: Keyfob) -> int:
        owner = await owner_of(kf)
        clients = await apps_of(kf, app_ref)
        if not clients:
            raise fail(f"no app {app_ref!r}")
        ended = 0
        for c in clients:
            grant = await kf.store.grants.active_for(owner.id, c.id)
            if grant is not None:
                await kf.store.grants.revoke(grant.id)
                ended += 1
        return ended

    ended = with_kf(data_dir, database_url, body)
    console.print(f"Revoked {ended} grant(s) of {app_ref}.")


@app.command("expire")
def apps_expire(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    within: Annotated[
        str | None, typer.Option("--in", help="Ends after this long: 90m, 12h, 7d, 2w.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Ends at this ISO 8601 time (UTC if no zone).")
    ] = None,
    never: Annotated[bool, typer.Option("--never", help="Never ends by itself.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set, change or lift when an app's grant ends. Its tokens end then too (at once,
    when the time is already past), and every endpoint refuses them as revoked ones."""
    import time

    from keyfob.oauth.grants import token_ttls_s

    if sum(x is not None and x is not False for x in (within, at, never)) != 1:
        raise fail("give exactly one of --in, --at or --never")
    try:
        ends: float | None = (
            None
            if never
            else time.time() + parse_duration(within)
            if within is not None
            else parse_instant(at or "")
        )
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> str:
        grant = await grant_of(kf, app_ref)
        await kf.store.grants.set_expiry(grant.id, ends, token_ttls_s=token_ttls_s(kf.settings))
        return str(grant.client_id)

    client_id = with_kf(data_dir, database_url, body)
    if ends is None:
        console.print(f"The grant of {app_ref} ({client_id}) no longer ends by itself.")
    else:
        console.print(f"The grant of {app_ref} ({client_id}) ends at {iso(ends)}.")
