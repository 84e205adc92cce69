"""``keyfob usage``: spend per app, model and day, from the ledger."""

from __future__ import annotations

from typing import Annotated, Any

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
    from keyfob.store.metering.reads import usage_rows

    output = "json" if as_json else output
    if output not in ("table", "json", "csv"):
        raise fail("--format is table, json or csv")
    try:
        groups = parse_groups(by)
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def body(kf: Keyfob) -> list[dict[str, Any]]:
        owner = await owner_of(kf)
        rows = await usage_rows(
            kf.store.engine,
            user_id=owner.id,
            since=_day_start(since, owner.timezone),
            until=_day_start(until, owner.timezone),
        )
        return summarize(rows, groups, owner.timezone)

    rows = with_kf(data_dir, database_url, body)
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
