"""``keyfob models ...``: every model of the person's providers, and aliases."""

from __future__ import annotations

from typing import Annotated

import typer

from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    console,
    fail,
    owner_of,
    with_kf,
)
from keyfob.context import Keyfob

app = typer.Typer(
    help="Every model of your providers, and your own names for them.", no_args_is_help=True
)


@app.command("list")
def models_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Every model of every provider (canonical ids), its price source and aliases."""
    from rich.table import Table

    from keyfob.pricing.model_limits import limits_for
    from keyfob.pricing.prices import UnknownPrice, price_for

    async def body(kf: Keyfob) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
        owner = await owner_of(kf)
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

    rows, aliases = with_kf(data_dir, database_url, body)
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


@app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Your name for the model, e.g. fast.")],
    target: Annotated[str, typer.Argument(help="PROVIDER/MODEL (or a bare model name).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let apps call TARGET by NAME (the app's grant must still allow TARGET)."""
    from keyfob.gateway.models import AliasRefused, check_alias

    async def body(kf: Keyfob) -> str:
        owner = await owner_of(kf)
        try:
            checked = check_alias(name, target, await kf.store.providers.catalog(owner.id))
        except AliasRefused as exc:
            raise fail(str(exc)) from None
        await kf.store.providers.set_alias(owner.id, name, checked)
        return checked

    checked = with_kf(data_dir, database_url, body)
    console.print(f"Alias {name} -> {checked}")


@app.command("unalias")
def models_unalias(
    name: Annotated[str, typer.Argument(help="The alias to remove.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove an alias."""

    async def body(kf: Keyfob) -> bool:
        owner = await owner_of(kf)
        removed: bool = await kf.store.providers.remove_alias(owner.id, name)
        return removed

    if not with_kf(data_dir, database_url, body):
        raise fail(f"no alias {name!r}")
    console.print(f"Alias {name} removed.")
