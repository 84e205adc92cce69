"""The person's prepaid wallet: balance, holds of calls in flight, top-ups and refills.

The balance and holds are the ``wallet`` counter of scope ``wallet:<user id>`` (metering
counts it like any limit: a counter holding minus the balance against a cap of zero);
this table keeps the monthly refill. Every change writes a history row in the same
transaction, so the history always adds up to the balance."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyfob.metering.types import WALLET_KEY, wallet_scope
from keyfob.store import schema as t
from keyfob.store.metering.writeback import synced
from keyfob.store.records import Wallet, WalletTransaction
from keyfob.tokens import new_id


class WalletsRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _ensure(self, conn: AsyncConnection, user_id: str) -> None:
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(
            dialect.insert(t.wallets).values(user_id=user_id).on_conflict_do_nothing()
        )
        await conn.execute(
            dialect.insert(t.counters)
            .values(scope=wallet_scope(user_id), key=WALLET_KEY, spent=0, reserved=0)
            .on_conflict_do_nothing()
        )

    async def get(self, user_id: str) -> Wallet:
        await synced()
        c = t.counters.c
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(t.wallets).where(t.wallets.c.user_id == user_id))
            ).first()
            counter = (
                await conn.execute(
                    select(c.spent, c.reserved).where(
                        c.scope == wallet_scope(user_id), c.key == WALLET_KEY
                    )
                )
            ).first()
        spent, reserved = (int(counter[0]), int(counter[1])) if counter else (0, 0)
        if row is None:
            return Wallet(user_id, -spent, reserved, None, None)
        return Wallet(user_id, -spent, reserved, row.monthly_refill_micro_usd, row.refilled_for)

    async def top_up(self, user_id: str, amount_micro_usd: int, note: str | None = None) -> Wallet:
        if amount_micro_usd <= 0:
            raise ValueError("a top-up is a positive amount")
        c = t.counters.c
        async with self.engine.begin() as conn:
            await self._ensure(conn, user_id)
            row = (
                await conn.execute(
                    update(t.counters)
                    .where(c.scope == wallet_scope(user_id), c.key == WALLET_KEY)
                    .values(spent=c.spent - amount_micro_usd)
                    .returning(c.spent)
                )
            ).first()
            assert row is not None
            await conn.execute(
                t.wallet_transactions.insert().values(
                    id=new_id(),
                    user_id=user_id,
                    kind="topup",
                    amount_micro_usd=amount_micro_usd,
                    balance_after_micro_usd=-int(row[0]),
                    ledger_id=None,
                    note=note,
                    created_at=time.time(),
                )
            )
        return await self.get(user_id)

    async def set_monthly_refill(self, user_id: str, amount_micro_usd: int | None) -> Wallet:
        async with self.engine.begin() as conn:
            await self._ensure(conn, user_id)
            await conn.execute(
                update(t.wallets)
                .where(t.wallets.c.user_id == user_id)
                .values(monthly_refill_micro_usd=amount_micro_usd, refilled_for=None)
            )
        return await self.get(user_id)

    async def history(self, user_id: str, limit: int = 1000) -> list[WalletTransaction]:
        tx = t.wallet_transactions.c
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.wallet_transactions)
                    .where(tx.user_id == user_id)
                    .order_by(tx.created_at.desc())
                    .limit(limit)
                )
            ).all()
        return [
            WalletTransaction(
                r.id,
                r.user_id,
                r.kind,
                int(r.amount_micro_usd),
                int(r.balance_after_micro_usd),
                r.ledger_id,
                r.note,
                r.created_at,
            )
            for r in rows
        ]
