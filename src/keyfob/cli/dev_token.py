"""``keyfob dev-token``: an access token for the owner's own local testing."""

from __future__ import annotations

from typing import Annotated

import typer

from keyfob.cli.apps import iso, parse_duration
from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    err,
    fail,
    owner_of,
    with_kf,
)
from keyfob.context import Keyfob


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
            user=await owner_of(kf),
        )
        return made, kf.settings.issuer

    try:
        made, issuer = with_kf(data_dir, database_url, body)
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
