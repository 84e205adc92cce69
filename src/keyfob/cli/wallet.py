"""``keyfob wallet ...``: the prepaid wallet apps can draw from."""

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

app = typer.Typer(help="The prepaid wallet apps can draw from.", no_args_is_help=True)


@app.command("show")
def wallet_show(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Balance, holds of calls in flight, refill, and the history."""
    from rich.table import Table

    from keyfob.money import usd_precise, usd_summary

    async def body(kf: Keyfob) -> tuple[Any, list[Any]]:
        owner = await owner_of(kf)
        return (await kf.store.wallets.get(owner.id), await kf.store.wallets.history(owner.id))

    wallet, history = with_kf(data_dir, database_url, body)
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


@app.command("topup")
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
        owner = await owner_of(kf)
        return await kf.store.wallets.top_up(owner.id, micro, note)

    try:
        wallet = with_kf(data_dir, database_url, body)
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"Wallet balance: {usd_summary(wallet.balance_micro_usd)}")


@app.command("refill")
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
        owner = await owner_of(kf)
        return await kf.store.wallets.set_monthly_refill(owner.id, micro)

    with_kf(data_dir, database_url, body)
    console.print("Monthly refill " + ("off." if micro is None else f"set to {amount} USD."))
