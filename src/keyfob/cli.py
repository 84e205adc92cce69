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


# --- shared plumbing for commands that work on the store --------------------------------

providers_app = typer.Typer(help="Link and list the AI providers apps may use.",
                            no_args_is_help=True)
apps_app = typer.Typer(help="Register apps and manage what they were granted.",
                       no_args_is_help=True)
vault_app = typer.Typer(help="Master keys of the credential vault.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")
app.add_typer(apps_app, name="apps")
app.add_typer(vault_app, name="vault")


async def _open(data_dir: Path | None, database_url: str | None) -> Any:
    from keyfob.context import Keyfob

    return await Keyfob.open(settings_for(data_dir, database_url))


async def _owner(kf: Any) -> Any:
    owner = await kf.store.users.owner()
    if owner is None:
        raise fail("no owner yet: run `keyfob init` first")
    return owner


def _with_kf(data_dir: Path | None, database_url: str | None,
             body: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        kf = await _open(data_dir, database_url)
        try:
            return await body(kf)
        finally:
            await kf.close()

    return run(go)


@providers_app.command("add")
def providers_add(
    name: Annotated[str, typer.Argument(help="A short name, e.g. openai or local.")],
    base_url: Annotated[str, typer.Option("--base-url", help="OpenAI-compatible base URL, "
                                          "e.g. https://api.openai.com/v1")],
    models: Annotated[list[str] | None, typer.Option("--model", "-m",
                                                     help="A model it serves (repeatable).")]
    = None,
    local: Annotated[bool, typer.Option("--local", help="Your own hardware: priced 0 by "
                                        "default, no key needed.")] = False,
    no_key: Annotated[bool, typer.Option("--no-key", help="The endpoint needs no key.")] = False,
    kind: Annotated[str, typer.Option(help="Adapter kind.")] = "openai_compatible",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Link a provider. The API key is read from KEYFOB_PROVIDER_KEY or a hidden prompt,
    encrypted at once, and never shown again."""
    from keyfob.providers.linking import LinkRefused, link_provider

    api_key: str | None = None
    if not (no_key or (local and not os.environ.get("KEYFOB_PROVIDER_KEY"))):
        api_key = os.environ.get("KEYFOB_PROVIDER_KEY") or getpass.getpass("API key: ")
        api_key = api_key.strip() or None

    async def body(kf: Any) -> Any:
        owner = await _owner(kf)
        return await link_provider(kf, user_id=owner.id, name=name, kind=kind,
                                   base_url=base_url, api_key=api_key, models=list(models or []),
                                   is_local=local)

    try:
        provider = _with_kf(data_dir, database_url, body)
    except LinkRefused as exc:
        raise fail(str(exc)) from None
    shown = ", ".join(provider.models) or "none listed"
    console.print(f"Linked [bold]{provider.name}[/bold] ({provider.base_url}); models: {shown}")


@providers_app.command("list")
def providers_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List linked providers (never their keys)."""
    from rich.table import Table

    async def body(kf: Any) -> list[Any]:
        owner = await _owner(kf)
        return list(await kf.store.providers.list(owner.id))

    table = Table("name", "kind", "base URL", "key", "local", "models")
    for p in _with_kf(data_dir, database_url, body):
        table.add_row(p.name, p.kind, p.base_url, "stored" if p.credential_envelope else "-",
                      "yes" if p.is_local else "no", ", ".join(p.models))
    console.print(table)


@providers_app.command("price")
def providers_price(
    name: Annotated[str, typer.Argument(help="Provider name.")],
    model: Annotated[str, typer.Argument(help="Model name at that provider.")],
    input_usd: Annotated[str, typer.Option("--input", help="USD per million input tokens.")],
    output_usd: Annotated[str, typer.Option("--output", help="USD per million output tokens.")],
    cached_usd: Annotated[str | None, typer.Option("--cached-input",
                                                   help="USD per million cached input tokens.")]
    = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set the price of a model (overrides genai-prices; needed for models it does not know)."""
    from keyfob.money import parse_usd

    try:
        prices = (parse_usd(input_usd), parse_usd(output_usd),
                  parse_usd(cached_usd) if cached_usd is not None else None)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Any) -> None:
        owner = await _owner(kf)
        provider = await kf.store.providers.by_name(owner.id, name)
        if provider is None:
            raise fail(f"no provider named {name!r}")
        await kf.store.providers.set_price(
            provider.id, model, input_micro_usd_per_mtok=prices[0],
            output_micro_usd_per_mtok=prices[1], cached_input_micro_usd_per_mtok=prices[2])

    _with_kf(data_dir, database_url, body)
    console.print(f"Price of {name}/{model} set.")


@apps_app.command("add")
def apps_add(
    name: Annotated[str, typer.Argument(help="The app's name, shown on the consent screen.")],
    redirect_uris: Annotated[list[str], typer.Option("--redirect-uri", "-r",
                                                     help="An exact redirect URI (repeatable).")],
    confidential: Annotated[bool, typer.Option("--confidential", help="A server-side app with "
                                               "a client secret (default: public, PKCE only).")]
    = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register an app. A confidential app's secret is printed once and stored hashed."""
    from keyfob.oauth.clients import register_app

    async def body(kf: Any) -> tuple[Any, str | None]:
        return await register_app(kf.store, name=name, redirect_uris=list(redirect_uris),
                                  public=not confidential)

    try:
        client, secret = _with_kf(data_dir, database_url, body)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"client_id: {client.id}")
    if secret:
        console.print(f"client_secret: {secret}")
        err.print("[yellow]The secret is shown only now; Keyfob keeps only its hash.[/yellow]")


@apps_app.command("list")
def apps_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List apps and what each was granted, with this window's spend."""
    from rich.table import Table

    from keyfob.money import format_usd

    async def body(kf: Any) -> list[tuple[Any, ...]]:
        owner = await _owner(kf)
        grants = {g.client_id: g for g in await kf.store.grants.list(owner.id)}
        rows = []
        for c in await kf.store.clients.list():
            g = grants.get(c.id)
            if g is None:
                rows.append((c, None, None, None))
                continue
            window, state = await kf.allowance.remaining(g)
            rows.append((c, g, window, state))
        return rows

    table = Table("app", "client_id", "type", "granted", "cap / month", "spent", "left", "models")
    for c, g, _window, state in _with_kf(data_dir, database_url, body):
        kind = "public" if c.is_public else "confidential"
        if g is None:
            table.add_row(c.name, c.id, kind, "no", "-", "-", "-", "")
        else:
            table.add_row(c.name, c.id, kind, "yes", format_usd(g.cap_micro_usd),
                          format_usd(state.spent_micro_usd), format_usd(state.left_micro_usd),
                          ", ".join(g.models))
    console.print(table)


@apps_app.command("revoke")
def apps_revoke(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """End the app's grant: its tokens stop working at once."""

    async def body(kf: Any) -> int:
        owner = await _owner(kf)
        clients = [c for c in await kf.store.clients.list() if app_ref in (c.id, c.name)]
        if not clients:
            raise fail(f"no app {app_ref!r}")
        ended = 0
        for c in clients:
            grant = await kf.store.grants.active_for(owner.id, c.id)
            if grant is not None:
                await kf.store.grants.revoke(grant.id)
                ended += 1
        return ended

    ended = _with_kf(data_dir, database_url, body)
    console.print(f"Revoked {ended} grant(s) of {app_ref}.")


@app.command()
def usage(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Spend per app and model (all time), from the ledger."""
    import json

    from rich.table import Table

    from keyfob.money import format_usd

    async def body(kf: Any) -> list[dict[str, Any]]:
        owner = await _owner(kf)
        return list(await kf.store.metering.usage_by_app_model(owner.id))

    rows = _with_kf(data_dir, database_url, body)
    if as_json:
        for r in rows:
            r["cost_usd"] = format_usd(int(r["cost_micro_usd"]))
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("app", "model", "calls", "input tokens", "output tokens", "cost (USD)",
                  "to reconcile")
    total = 0
    for r in rows:
        total += int(r["cost_micro_usd"])
        table.add_row(r["app"], r["model"], str(r["calls"]), str(r["input_tokens"]),
                      str(r["output_tokens"]), format_usd(int(r["cost_micro_usd"])),
                      str(r["flagged"] or 0))
    console.print(table)
    console.print(f"Total: {format_usd(total)} USD")


@vault_app.command("rotate")
def vault_rotate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Add a new master key and re-encrypt every stored credential under it."""
    from keyfob.vault import Vault

    settings = settings_for(data_dir, database_url)
    if settings.master_key:
        raise fail("the master key comes from KEYFOB_MASTER_KEY: append a new key there "
                   "(comma-separated, newest last) and run this again")
    key_id = Vault.rotate_file(settings.data_dir)

    async def body(kf: Any) -> int:
        count = 0
        for p in await kf.store.providers.list_all():
            if p.credential_envelope:
                await kf.store.providers.set_credential(
                    p.id, kf.vault.rewrap(p.credential_envelope, p.id))
                count += 1
        return count

    count = _with_kf(data_dir, database_url, body)
    console.print(f"New master key {key_id}; {count} credential(s) re-encrypted.")


def main() -> None:
    app()
