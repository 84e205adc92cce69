"""``keyfob providers ...``: link providers, their prices, limits and order."""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any

import typer

from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    console,
    err,
    fail,
    owner_of,
    with_kf,
)
from keyfob.context import Keyfob

app = typer.Typer(help="Link and list the AI providers apps may use.", no_args_is_help=True)


@app.command("add")
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

        owner = await owner_of(kf)
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
        provider, unpriced, problem = with_kf(data_dir, database_url, body)
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


@app.command("kinds")
def providers_kinds() -> None:
    """The installed provider adapters (built-in and plugins), by kind."""
    from keyfob.providers import ProviderRegistry

    registry = ProviderRegistry.load()
    for kind in registry.kinds():
        adapter = registry.get(kind)
        default = getattr(adapter, "default_base_url", "") or "(base URL required)"
        console.print(f"{kind:<20} {adapter.label:<32} {default}")


@app.command("list")
def providers_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List linked providers (never their keys)."""
    from rich.table import Table

    async def body(kf: Keyfob) -> tuple[list[Any], dict[str, Any]]:
        owner = await owner_of(kf)
        marks = await kf.store.overruns.by_provider(owner.id)
        return list(await kf.store.providers.list(owner.id)), marks

    from keyfob.gateway.headers import iso_utc

    providers, marks = with_kf(data_dir, database_url, body)
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


@app.command("price")
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
        owner = await owner_of(kf)
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

    with_kf(data_dir, database_url, body)
    console.print(f"Price of {name}/{model} set.")


@app.command("limits")
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
    tool_price: Annotated[
        list[str] | None,
        typer.Option(
            "--tool-price",
            metavar="NAME=USD",
            help="A server-side tool's price per use, e.g. anthropic-web-search=0.01 (repeatable).",
        ),
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the shipped data.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show or set a model's limits: context window, output maximum, image rule, tool prices.

    Keyfob bounds every call's cost before it reaches the provider: content billed by
    reference (file ids, PDF documents) by the context window, calls without an output
    limit by the output maximum, images by their rule, server-side tools (web search) by
    their price per use. Shipped data covers common models; set your own for the others
    (yours win over the shipped values)."""
    from keyfob.money import format_usd, parse_usd
    from keyfob.pricing.model_limits import image_rule_names, limits_for, tool_names
    from keyfob.store.records import LimitOverride

    if image_rule is not None and image_rule not in image_rule_names():
        raise fail(f"unknown image rule {image_rule!r}; one of: {', '.join(image_rule_names())}")
    tool_prices: dict[str, int] = {}
    for item in tool_price or []:
        tool, _, usd = item.partition("=")
        if tool.strip() not in tool_names():
            raise fail(f"unknown tool {tool.strip()!r}; one of: {', '.join(tool_names())}")
        try:
            tool_prices[tool.strip()] = parse_usd(usd)
        except ValueError as exc:
            raise fail(f"--tool-price {item!r}: {exc}") from None
    setting = (
        context is not None or max_output is not None or image_rule is not None or bool(tool_prices)
    )
    if reset and setting:
        raise fail("--reset takes no other option")
    changing = reset or setting

    async def body(kf: Keyfob) -> Any:
        owner = await owner_of(kf)
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
                tuple(sorted({**dict(old.tool_prices), **tool_prices}.items())),
            )
            await kf.store.providers.set_limits(provider.id, model, new)
            overrides = await kf.store.providers.limits(provider.id)
        return limits_for(provider.kind, model, overrides)

    found = with_kf(data_dir, database_url, body)
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
    for tool, micro_usd in found.tool_overrides:
        console.print(f"tool {tool}: ${format_usd(micro_usd)} per use (yours)")
    if changing:
        console.print("A running server applies it within 10 seconds.")


@app.command("order")
def providers_order(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Providers, first first.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set which provider serves a bare model name first (the others follow, as before)."""

    async def body(kf: Keyfob) -> list[str]:
        owner = await owner_of(kf)
        try:
            order: list[str] = await kf.store.providers.set_order(owner.id, list(names))
        except KeyError as exc:
            raise fail(str(exc.args[0])) from None
        return order

    order = with_kf(data_dir, database_url, body)
    console.print("Preference order: " + ", ".join(order))
