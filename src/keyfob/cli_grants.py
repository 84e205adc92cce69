"""``keyfob apps expire`` and ``keyfob dev-token``: a grant's end, and tokens for the
owner's own testing. Registered on the ``keyfob`` command by ``cli.py``; kept apart so
the command module stays small."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from keyfob.cli import DatabaseUrl, DataDir, _grant_of, _with_kf, app, apps_app, console, err, fail

if TYPE_CHECKING:
    from keyfob.context import Keyfob

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


@apps_app.command("expire")
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
        grant = await _grant_of(kf, app_ref)
        await kf.store.grants.set_expiry(grant.id, ends, token_ttls_s=token_ttls_s(kf.settings))
        return str(grant.client_id)

    client_id = _with_kf(data_dir, database_url, body)
    if ends is None:
        console.print(f"The grant of {app_ref} ({client_id}) no longer ends by itself.")
    else:
        console.print(f"The grant of {app_ref} ({client_id}) ends at {iso(ends)}.")


@app.command("dev-token")
def dev_token(
    app_ref: Annotated[
        str, typer.Argument(metavar="APP", help="App name or client_id (registered if new).")
    ],
    cap: Annotated[str, typer.Option("--cap", help="Spending cap in USD.")] = "1.00",
    window: Annotated[str, typer.Option("--window", help="day, week or month.")] = "day",
    ttl: Annotated[str, typer.Option("--ttl", help="Life: 1m to 24h (30m, 1h...).")] = "1h",
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A granted model (repeatable; default: all linked)."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="End the app's live grant and make a new one.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """An access token for your own local testing of an app: a small cap, a short life
    (also its grant's end), no refresh token. Printed once; refused in hosted mode."""
    from keyfob.money import parse_usd
    from keyfob.oauth.consent import WINDOWS
    from keyfob.oauth.dev_tokens import DevToken, DevTokenRefused, mint_dev_token

    try:
        cap_micro_usd = parse_usd(cap)
        ttl_s = parse_duration(ttl)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if window not in WINDOWS:
        raise fail(f"the window is one of {', '.join(WINDOWS)}")

    async def body(kf: Keyfob) -> tuple[DevToken, str]:
        made = await mint_dev_token(
            kf,
            app_ref=app_ref,
            cap_micro_usd=cap_micro_usd,
            window=window,
            ttl_s=ttl_s,
            models=models,
            replace=replace,
        )
        return made, kf.settings.issuer

    try:
        made, issuer = _with_kf(data_dir, database_url, body)
    except DevTokenRefused as exc:
        raise fail(str(exc)) from None
    if made.created_app:
        err.print(f"Registered a public app {made.client.name!r} ({made.client.id}).")
    err.print(
        f"Access token for {made.client.name!r}: ${cap} per {window} on "
        f"{', '.join(made.grant.models)}, until {iso(made.expires_at)}. "
        f"Base URL: {issuer}/v1. Shown only now; Keyfob keeps only its hash."
    )
    print(made.token)  # stdout alone, for `export OPENAI_API_KEY=$(keyfob dev-token app)`
