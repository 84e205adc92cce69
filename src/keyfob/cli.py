"""The ``keyfob`` command: serve, first-run setup, providers, apps, usage, vault."""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from keyfob.settings import Settings, UnsafeSettings

if TYPE_CHECKING:  # imported where used: the CLI starts without loading the server
    from keyfob.context import Keyfob
    from keyfob.store.records import Grant, User

app = typer.Typer(
    help="Keyfob: bring your own AI account to any app.", no_args_is_help=True, add_completion=False
)
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

    def announce(link: str) -> None:
        # The terminal only, never the log: whoever holds this link creates the owner.
        console.print(f"No owner yet. Create one at [bold]{link}[/bold]", soft_wrap=True)
        console.file.flush()

    try:
        application = create_app(settings, announce)
    except UnsafeSettings as exc:
        raise fail(str(exc)) from None
    from keyfob.store import prepare_sqlite_file
    from keyfob.store.sqlite_writeback import owner_running

    db_file = prepare_sqlite_file(settings.effective_database_url)
    if db_file is not None and owner_running(db_file):
        raise fail(
            f"another keyfob serve is already serving {db_file}; stop it first "
            "(one server per database: it meters calls in memory)"
        )
    console.print(f"Keyfob on [bold]{settings.issuer}[/bold] (data: {settings.data_dir})")
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        # Forwarding headers are believed only from KEYFOB_TRUSTED_PROXIES (guard.py):
        # uvicorn's own default trusts them from 127.0.0.1, i.e. from every local client.
        proxy_headers=False,
        forwarded_allow_ips="",
    )


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

providers_app = typer.Typer(
    help="Link and list the AI providers apps may use.", no_args_is_help=True
)
apps_app = typer.Typer(
    help="Register apps and manage what they were granted.", no_args_is_help=True
)
vault_app = typer.Typer(help="Master keys of the credential vault.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")
app.add_typer(apps_app, name="apps")
app.add_typer(vault_app, name="vault")


async def _open(data_dir: Path | None, database_url: str | None) -> Keyfob:
    from keyfob.context import Keyfob

    return await Keyfob.open(settings_for(data_dir, database_url))


async def _owner(kf: Keyfob) -> User:
    owner = await kf.store.users.owner()
    if owner is None:
        raise fail("no owner yet: run `keyfob init` first")
    return owner


def _with_kf(
    data_dir: Path | None, database_url: str | None, body: Callable[[Keyfob], Awaitable[T]]
) -> T:
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
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url",
            help="Base URL, e.g. http://127.0.0.1:8080/v1; optional for the kinds "
            "openai, anthropic, gemini and openrouter, which know their own.",
        ),
    ] = "",
    models: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="A model it serves (repeatable).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Your own hardware: priced 0 by default, no key needed.")
    ] = False,
    no_key: Annotated[bool, typer.Option("--no-key", help="The endpoint needs no key.")] = False,
    kind: Annotated[
        str, typer.Option(help="Adapter kind (`keyfob providers kinds` lists them).")
    ] = "openai_compatible",
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

    async def body(kf: Keyfob) -> tuple[Any, list[str], str]:
        from keyfob.providers.connection import try_connection, unpriced_models
        from keyfob.providers.linking import decrypt_key

        owner = await _owner(kf)
        provider = await link_provider(
            kf,
            user_id=owner.id,
            name=name,
            kind=kind,
            base_url=base_url,
            api_key=api_key,
            models=list(models or []),
            is_local=local,
        )
        # linked first (the address passed every check), then tried: a server that is off
        # right now is still linked, with a warning
        tried = await try_connection(
            kf,
            kind=provider.kind,
            base_url=provider.base_url,
            api_key=await decrypt_key(kf, provider),
            is_local=provider.is_local,
        )
        return provider, await unpriced_models(kf, provider), tried.problem

    try:
        provider, unpriced, problem = _with_kf(data_dir, database_url, body)
    except LinkRefused as exc:
        raise fail(str(exc)) from None
    shown = ", ".join(provider.models) or "none listed"
    console.print(f"Linked [bold]{provider.name}[/bold] ({provider.base_url}); models: {shown}")
    if problem:
        err.print(f"[yellow]Connection test failed: {problem}.[/yellow]")
    for model in unpriced:
        err.print(
            f"[yellow]No price is known for {model}: calls to it are refused until you set "
            f"one: keyfob providers price {provider.name} {model} --input USD_PER_MTOK "
            "--output USD_PER_MTOK[/yellow]"
        )


@providers_app.command("kinds")
def providers_kinds() -> None:
    """The installed provider adapters (built-in and plugins), by kind."""
    from keyfob.providers import ProviderRegistry

    registry = ProviderRegistry.load()
    for kind in registry.kinds():
        adapter = registry.get(kind)
        default = getattr(adapter, "default_base_url", "") or "(base URL required)"
        console.print(f"{kind:<20} {adapter.label:<32} {default}")


@providers_app.command("list")
def providers_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List linked providers (never their keys)."""
    from rich.table import Table

    async def body(kf: Keyfob) -> tuple[list[Any], dict[str, Any]]:
        owner = await _owner(kf)
        marks = await kf.store.overruns.by_provider(owner.id)
        return list(await kf.store.providers.list(owner.id)), marks

    from keyfob.gateway.headers import iso_utc

    providers, marks = _with_kf(data_dir, database_url, body)
    table = Table("name", "kind", "base URL", "key", "local", "models", "output limit")
    for p in providers:
        mark = marks.get(p.id)
        table.add_row(
            p.name,
            p.kind,
            p.base_url,
            "stored" if p.credential_envelope else "-",
            "yes" if p.is_local else "no",
            ", ".join(p.models),
            (
                f"IGNORED {mark.count}x (last {iso_utc(mark.last_at)})"
                if mark is not None
                else "no overrun"
            ),
        )
    console.print(table)
    if marks:
        console.print(
            "A provider marked IGNORED billed past the output limit Keyfob sent; those "
            "calls were charged their real cost."
        )


@providers_app.command("price")
def providers_price(
    name: Annotated[str, typer.Argument(help="Provider name.")],
    model: Annotated[str, typer.Argument(help="Model name at that provider.")],
    input_usd: Annotated[str, typer.Option("--input", help="USD per million input tokens.")],
    output_usd: Annotated[str, typer.Option("--output", help="USD per million output tokens.")],
    cached_usd: Annotated[
        str | None, typer.Option("--cached-input", help="USD per million cached input tokens.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set the price of a model (overrides genai-prices; needed for models it does not know)."""
    from keyfob.money import parse_usd

    try:
        prices = (
            parse_usd(input_usd),
            parse_usd(output_usd),
            parse_usd(cached_usd) if cached_usd is not None else None,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> None:
        owner = await _owner(kf)
        provider = await kf.store.providers.by_name(owner.id, name)
        if provider is None:
            raise fail(f"no provider named {name!r}")
        await kf.store.providers.set_price(
            provider.id,
            model,
            input_micro_usd_per_mtok=prices[0],
            output_micro_usd_per_mtok=prices[1],
            cached_input_micro_usd_per_mtok=prices[2],
        )

    _with_kf(data_dir, database_url, body)
    console.print(f"Price of {name}/{model} set.")


@providers_app.command("limits")
def providers_limits(
    name: Annotated[str, typer.Argument(help="Provider name.")],
    model: Annotated[str, typer.Argument(help="Model name at that provider.")],
    context: Annotated[
        int | None, typer.Option("--context", min=1, help="Context window, in tokens.")
    ] = None,
    max_output: Annotated[
        int | None, typer.Option("--max-output", min=1, help="Most output tokens per call.")
    ] = None,
    image_rule: Annotated[
        str | None,
        typer.Option("--image-rule", help="How the model bills images (a rule name, see below)."),
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the shipped data.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show or set a model's limits: context window, output maximum, image rule.

    Keyfob bounds every call's cost before it reaches the provider: content billed by
    reference (file ids, PDF documents) by the context window, calls without an output
    limit by the output maximum, images by their rule. Shipped data covers common models;
    set your own for the others (yours win over the shipped values)."""
    from keyfob.pricing.model_limits import image_rule_names, limits_for
    from keyfob.store.records import LimitOverride

    if image_rule is not None and image_rule not in image_rule_names():
        raise fail(f"unknown image rule {image_rule!r}; one of: {', '.join(image_rule_names())}")
    setting = context is not None or max_output is not None or image_rule is not None
    if reset and setting:
        raise fail("--reset takes no other option")
    changing = reset or setting

    async def body(kf: Keyfob) -> Any:
        owner = await _owner(kf)
        provider = await kf.store.providers.by_name(owner.id, name)
        if provider is None:
            raise fail(f"no provider named {name!r}")
        overrides = await kf.store.providers.limits(provider.id)
        if changing:
            old = overrides.get(model, LimitOverride()) if not reset else LimitOverride()
            new = LimitOverride(
                context if context is not None else old.context_window_tokens,
                max_output if max_output is not None else old.max_output_tokens,
                image_rule if image_rule is not None else old.image_rule,
            )
            await kf.store.providers.set_limits(provider.id, model, new)
            overrides = await kf.store.providers.limits(provider.id)
        return limits_for(provider.kind, model, overrides)

    found = _with_kf(data_dir, database_url, body)
    if found is None:
        console.print(
            f"{name}/{model}: no limits known. Calls that send files or documents by "
            f"reference are refused until you set a context window:\n"
            f"  keyfob providers limits {name} {model} --context N [--max-output N]"
        )
        return
    output = f"{found.max_output_tokens:,}" + ("" if found.max_output_known else " (default)")
    console.print(
        f"{name}/{model}: context window {found.context_window_tokens:,} tokens, "
        f"max output {output}, images: {found.image().name}\n"
        f"source: {found.source}" + (f" (as of {found.as_of})" if found.as_of else "")
    )
    if changing:
        console.print("A running server applies it within 10 seconds.")


@providers_app.command("order")
def providers_order(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Providers, first first.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set which provider serves a bare model name first (the others follow, as before)."""

    async def body(kf: Keyfob) -> list[str]:
        owner = await _owner(kf)
        try:
            order: list[str] = await kf.store.providers.set_order(owner.id, list(names))
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        return order

    order = _with_kf(data_dir, database_url, body)
    console.print("Preference order: " + ", ".join(order))


models_app = typer.Typer(
    help="Every model of your providers, and your own names for them.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Every model of every provider (canonical ids), its price source and aliases."""
    from rich.table import Table

    from keyfob.pricing.model_limits import limits_for
    from keyfob.pricing.prices import UnknownPrice, price_for

    async def body(kf: Keyfob) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
        owner = await _owner(kf)
        catalog = await kf.store.providers.catalog(owner.id)
        rows = []
        for p in catalog:
            overrides = await kf.store.providers.prices(p.id)
            own_limits = await kf.store.providers.limits(p.id)
            for m in p.models:
                lim = limits_for(p.kind, m, own_limits)
                limits = (
                    f"{lim.context_window_tokens:,} / {lim.max_output_tokens:,}"
                    + ("" if lim.max_output_known else "*")
                    if lim is not None
                    else "unknown"
                )
                try:
                    found = price_for(
                        m,
                        overrides=overrides,
                        is_local=p.is_local,
                        kind=p.kind,
                        base_url=p.base_url,
                    )
                    source = found.source
                    if found.catalogue:
                        source += f" ({found.catalogue})"
                except UnknownPrice:
                    source = "unknown (set one: keyfob providers price)"
                rows.append((f"{p.name}/{m}", p.name, source, limits))
        return rows, dict(catalog.aliases)

    rows, aliases = _with_kf(data_dir, database_url, body)
    named: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        named.setdefault(target, []).append(alias)
    table = Table("model", "provider", "price", "context / max output", "aliases")
    for cid, provider, source, limits in rows:
        bare = cid.split("/", 1)[1]
        aka = ", ".join(sorted(named.get(cid, []) + named.get(bare, [])))
        table.add_row(cid, provider, source, limits, aka)
    console.print(table)
    if any(limits.endswith("*") for *_, limits in rows):
        console.print("* output maximum not published: the default is assumed")
    listed = {r[0] for r in rows} | {r[0].split("/", 1)[1] for r in rows}
    for alias, target in sorted(aliases.items()):
        if target not in listed:
            console.print(f"alias {alias} -> {target} (not in any provider's model list)")


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Your name for the model, e.g. fast.")],
    target: Annotated[str, typer.Argument(help="PROVIDER/MODEL (or a bare model name).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let apps call TARGET by NAME (the app's grant must still allow TARGET)."""
    from keyfob.gateway.models import AliasRefused, check_alias

    async def body(kf: Keyfob) -> str:
        owner = await _owner(kf)
        try:
            checked = check_alias(name, target, await kf.store.providers.catalog(owner.id))
        except AliasRefused as exc:
            raise fail(str(exc)) from None
        await kf.store.providers.set_alias(owner.id, name, checked)
        return checked

    checked = _with_kf(data_dir, database_url, body)
    console.print(f"Alias {name} -> {checked}")


@models_app.command("unalias")
def models_unalias(
    name: Annotated[str, typer.Argument(help="The alias to remove.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove an alias."""

    async def body(kf: Keyfob) -> bool:
        owner = await _owner(kf)
        removed: bool = await kf.store.providers.remove_alias(owner.id, name)
        return removed

    if not _with_kf(data_dir, database_url, body):
        raise fail(f"no alias {name!r}")
    console.print(f"Alias {name} removed.")


@apps_app.command("add")
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
            kf.store, name=name, redirect_uris=list(redirect_uris), public=not confidential
        )

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
    """List apps and what each was granted: every limit with its own window, spent, left."""
    from rich.table import Table

    from keyfob.money import usd_summary

    async def body(kf: Keyfob) -> list[tuple[Any, ...]]:
        owner = await _owner(kf)
        grants = {g.client_id: g for g in await kf.store.grants.list(owner.id)}
        rows = []
        for c in await kf.store.clients.list():
            g = grants.get(c.id)
            rows.append((c, g, await kf.allowance.limits(g) if g is not None else []))
        return rows

    table = Table("app", "client_id", "type", "granted", "limit", "cap", "spent", "left", "models")
    for c, g, states in _with_kf(data_dir, database_url, body):
        kind = "public" if c.is_public else "confidential"
        if g is None:
            table.add_row(c.name, c.id, kind, "no", "-", "-", "-", "-", "")
            continue
        models = ", ".join(g.models) or "none"
        granted = cli_grants.granted_label(g.expires_at)
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


@apps_app.command("revoke")
def apps_revoke(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """End the app's grant: its tokens stop working at once."""

    async def body(kf: Keyfob) -> int:
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
    by: Annotated[str, typer.Option("--by", help="Group by any of app,model,day.")] = "app,model",
    output: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    since: Annotated[
        str | None, typer.Option(help="From this date (YYYY-MM-DD, your zone).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this date (YYYY-MM-DD).")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Spend per app, model and/or day, from the ledger; export as JSON or CSV."""
    import json

    from rich.table import Table

    from keyfob.allowance.usage import FIELDS, parse_groups, summarize, to_csv
    from keyfob.money import usd_summary
    from keyfob.store.metering import usage_rows

    output = "json" if as_json else output
    if output not in ("table", "json", "csv"):
        raise fail("--format is table, json or csv")
    try:
        groups = parse_groups(by)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> list[dict[str, Any]]:
        owner = await _owner(kf)
        rows = await usage_rows(
            kf.store.engine,
            user_id=owner.id,
            since=_day_start(since, owner.timezone),
            until=_day_start(until, owner.timezone),
        )
        return summarize(rows, groups, owner.timezone)

    rows = _with_kf(data_dir, database_url, body)
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    if output == "csv":
        typer.echo(to_csv(rows, groups), nl=False)
        return
    table = Table(*groups, *(f.replace("_", " ") for f in FIELDS[:3]), "cost", "to reconcile")
    total = 0
    for r in rows:
        total += int(r["cost_micro_usd"])
        table.add_row(
            *(str(r[g]) for g in groups),
            str(r["calls"]),
            str(r["input_tokens"]),
            str(r["output_tokens"]),
            usd_summary(int(r["cost_micro_usd"])),
            str(r["to_reconcile"]),
        )
    console.print(table)
    console.print(f"Total: {usd_summary(total)}")


def _day_start(day: str | None, timezone: str) -> float | None:
    if day is None:
        return None
    from datetime import date, datetime

    from keyfob.allowance.windows import zone

    try:
        d = date.fromisoformat(day)
    except ValueError:
        raise fail(f"not a date (YYYY-MM-DD): {day!r}") from None
    return datetime(d.year, d.month, d.day, tzinfo=zone(timezone)).timestamp()


wallet_app = typer.Typer(help="The prepaid wallet apps can draw from.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")


async def _grant_of(kf: Keyfob, app_ref: str) -> Grant:
    owner = await _owner(kf)
    for c in await kf.store.clients.list():
        if app_ref in (c.id, c.name):
            grant = await kf.store.grants.active_for(owner.id, c.id)
            if grant is not None:
                return grant
    raise fail(f"no active grant for app {app_ref!r}")


@apps_app.command("policy")
def apps_policy(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    month: Annotated[str | None, typer.Option(help="USD cap per calendar month.")] = None,
    week: Annotated[str | None, typer.Option(help="USD cap per calendar week.")] = None,
    day: Annotated[str | None, typer.Option(help="USD cap per calendar day.")] = None,
    rolling: Annotated[
        list[str] | None,
        typer.Option(help="Rolling cap DURATION=USD, e.g. 5h=2 or 7d=10 (repeatable)."),
    ] = None,
    model_cap: Annotated[
        list[str] | None,
        typer.Option("--model-cap", help="Monthly cap on one model: MODEL=USD (repeatable)."),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (worst case).")] = None,
    per_call: Annotated[str | None, typer.Option(help="USD ceiling per call.")] = None,
    wallet: Annotated[
        bool | None, typer.Option("--wallet/--no-wallet", help="Also draw from your wallet.")
    ] = None,
    on_exhausted: Annotated[str | None, typer.Option(help="block, wait or downgrade.")] = None,
    wait_max: Annotated[float | None, typer.Option(help="Seconds `wait` may hold a call.")] = None,
    fallback: Annotated[str | None, typer.Option(help="Model served by `downgrade`.")] = None,
    fallback_chain: Annotated[
        str | None,
        typer.Option(
            "--fallback-chain",
            help="Models tried in turn when the requested one's upstream fails, "
            "e.g. a/b,c/d ('' to clear).",
        ),
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="URL told at 50/80/100 percent.")] = None,
    output_limit: Annotated[
        str | None,
        typer.Option(
            "--output-limit",
            help="When a call's worst case does not fit: fit (lower its output limit), "
            "refuse, or auto (fit only when the app set no limit).",
        ),
    ] = None,
    fit_floor: Annotated[
        int | None,
        typer.Option("--fit-floor", help="Fewest output tokens `fit` lowers a call to."),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Only print the policy.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show or change an app's allowance: caps per window, rates, wallet, exhaustion."""
    from keyfob.allowance.policy import PolicyError, SpendLimit, parse_duration
    from keyfob.allowance.service import policy_of
    from keyfob.money import parse_usd, usd_summary

    async def body(kf: Keyfob) -> tuple[Any, list[Any], str]:
        grant = await _grant_of(kf, app_ref)
        policy = policy_of(grant)
        if not show:
            limits = list(policy.limits)

            def replace(
                period: str, usd: str | None, model: str | None = None, seconds: int | None = None
            ) -> None:
                if usd is None:
                    return
                limits[:] = [
                    lim
                    for lim in limits
                    if not (lim.period == period and lim.model == model and lim.seconds == seconds)
                ]
                if usd.strip() not in ("", "none", "off"):
                    limits.append(SpendLimit(period, parse_usd(usd), seconds, model))

            replace("month", month)
            replace("week", week)
            replace("day", day)
            for item in rolling or []:
                span, _, usd = item.partition("=")
                replace("rolling", usd, seconds=parse_duration(span))
            for item in model_cap or []:
                model, _, usd = item.rpartition("=")
                replace("month", usd, model=model)
            changes: dict[str, Any] = {"limits": tuple(limits)}
            if rpm is not None:
                changes["requests_per_minute"] = rpm or None
            if tpm is not None:
                changes["tokens_per_minute"] = tpm or None
            if per_call is not None:
                changes["per_call_ceiling_micro_usd"] = parse_usd(per_call) or None
            if wallet is not None:
                changes["use_wallet"] = wallet
            if on_exhausted is not None:
                changes["on_exhausted"] = on_exhausted
            if wait_max is not None:
                changes["wait_max_s"] = wait_max
            if fallback is not None:
                changes["fallback_model"] = fallback or None
            if webhook is not None:
                changes["webhook_url"] = webhook or None
            if fallback_chain is not None:
                chain = [m.strip() for m in fallback_chain.split(",") if m.strip()]
                changes["fallback_chain"] = tuple(chain)
            if output_limit is not None:
                changes["output_limit"] = output_limit
            if fit_floor is not None:
                changes["fit_floor_tokens"] = fit_floor
            policy = policy.with_changes(**changes)
            await kf.store.grants.set_policy(
                grant.id, policy_json=policy.to_json(), cap_micro_usd=policy.primary_cap_micro_usd
            )
            fresh = await kf.store.grants.get(grant.id)
            if fresh is None:
                raise fail("the app's grant was removed meanwhile")
            grant = fresh
        states = await kf.allowance.limits(grant)
        secret = kf.allowance.notifier.grant_secret(grant.id).hex()
        return (policy, states, secret)

    try:
        policy, states, secret = _with_kf(data_dir, database_url, body)
    except (PolicyError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"policy: {policy.to_json()}")
    for st in states:
        console.print(
            f"  {st.label:<24} cap {usd_summary(st.cap_micro_usd)}  "
            f"spent {usd_summary(st.spent_micro_usd)}  "
            f"left {usd_summary(st.left_micro_usd)}"
        )
    if policy.webhook_url:
        console.print(f"webhook signing secret (HMAC-SHA256): {secret}")


@wallet_app.command("show")
def wallet_show(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Balance, holds of calls in flight, refill, and the history."""
    from rich.table import Table

    from keyfob.money import usd_precise, usd_summary

    async def body(kf: Keyfob) -> tuple[Any, list[Any]]:
        owner = await _owner(kf)
        return (await kf.store.wallets.get(owner.id), await kf.store.wallets.history(owner.id))

    wallet, history = _with_kf(data_dir, database_url, body)
    refill = (
        usd_summary(wallet.monthly_refill_micro_usd)
        if wallet.monthly_refill_micro_usd is not None
        else "none"
    )
    console.print(
        f"balance {usd_summary(wallet.balance_micro_usd)}, held by calls in "
        f"flight {usd_summary(wallet.reserved_micro_usd)}, monthly refill {refill}"
    )
    table = Table("when (UTC)", "kind", "amount", "balance after", "note")
    from datetime import UTC, datetime

    for tx in history:
        table.add_row(
            datetime.fromtimestamp(tx.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            tx.kind,
            usd_precise(tx.amount_micro_usd),
            usd_precise(tx.balance_after_micro_usd),
            tx.note or "",
        )
    console.print(table)


@wallet_app.command("topup")
def wallet_topup(
    amount: Annotated[str, typer.Argument(help="USD to add.")],
    note: Annotated[str | None, typer.Option(help="A note for the history.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add money to the wallet (held calls waiting for it continue)."""
    from keyfob.money import parse_usd, usd_summary

    try:
        micro = parse_usd(amount)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> Any:
        owner = await _owner(kf)
        return await kf.store.wallets.top_up(owner.id, micro, note)

    try:
        wallet = _with_kf(data_dir, database_url, body)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"Wallet balance: {usd_summary(wallet.balance_micro_usd)}")


@wallet_app.command("refill")
def wallet_refill(
    amount: Annotated[
        str, typer.Argument(help="USD the wallet is topped up to each month; 'off' to stop.")
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Top the wallet up to AMOUNT at the start of each calendar month (your zone)."""
    from keyfob.money import parse_usd

    try:
        micro = None if amount.lower() in ("off", "none") else parse_usd(amount)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> Any:
        owner = await _owner(kf)
        return await kf.store.wallets.set_monthly_refill(owner.id, micro)

    _with_kf(data_dir, database_url, body)
    console.print("Monthly refill " + ("off." if micro is None else f"set to {amount} USD."))


@vault_app.command("rotate")
def vault_rotate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Add a new master key and re-encrypt every stored credential under it."""
    from keyfob.vault import Vault

    settings = settings_for(data_dir, database_url)
    if settings.master_key:
        raise fail(
            "the master key comes from KEYFOB_MASTER_KEY: append a new key there "
            "(comma-separated, newest last) and run this again"
        )
    key_id = Vault.rotate_file(settings.data_dir)

    async def body(kf: Keyfob) -> int:
        count = 0
        for p in await kf.store.providers.list_all():
            if p.credential_envelope:
                await kf.store.providers.set_credential(
                    p.id, kf.vault.rewrap(p.credential_envelope, p.id)
                )
                count += 1
        return count

    count = _with_kf(data_dir, database_url, body)
    console.print(f"New master key {key_id}; {count} credential(s) re-encrypted.")


@app.command()
def terms() -> None:
    """The provider-terms registry: which credentials may serve third-party apps, and why."""
    from rich.table import Table

    from keyfob.terms.table import HEADERS, rows

    table = Table(*HEADERS, show_lines=True)
    for credential, verdict, summary, source, checked in rows():
        style = "green" if verdict == "allowed" else "red"
        table.add_row(credential, f"[{style}]{verdict}[/{style}]", summary, source, checked)
    console.print(table)


def main() -> None:
    app()


# `keyfob apps expire` and `keyfob dev-token` (registered on import)
from keyfob import cli_grants  # noqa: E402
