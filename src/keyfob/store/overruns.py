"""Overruns: calls whose upstream billed past the bound Keyfob reserved and sent.

One row per such call. The provider is "marked" by its rows (how many, the last one),
which ``keyfob providers list`` and the dashboard show; the person's unseen rows are the
flag the dashboard raises until they are marked seen.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t
from keyfob.tokens import new_id

if TYPE_CHECKING:
    from keyfob.store.sqlite_hot import SqliteHotPath


_INSERT = (
    "INSERT INTO limit_overruns (id, user_id, grant_id, provider_id, model, ledger_id, kind, "
    "reserved_micro_usd, cost_micro_usd, output_limit_tokens, output_tokens, created_at) "
    "VALUES (:id, :user_id, :grant_id, :provider_id, :model, :ledger_id, :kind, "
    ":reserved_micro_usd, :cost_micro_usd, :output_limit_tokens, :output_tokens, :created_at)"
)


@dataclass(frozen=True)
class Overrun:
    id: str
    user_id: str
    grant_id: str | None
    provider_id: str | None
    model: str
    ledger_id: str
    #: usage_reported | stream_cut
    kind: str
    reserved_micro_usd: int
    cost_micro_usd: int
    output_limit_tokens: int | None
    output_tokens: int | None
    created_at: float
    seen_at: float | None


@dataclass(frozen=True)
class ProviderMark:
    """A provider that ignored the output limit: how often, and when last."""

    provider_id: str
    count: int
    last_at: float


class OverrunsRepo:
    def __init__(self, engine: AsyncEngine, hot: SqliteHotPath | None = None) -> None:
        self.engine = engine
        #: The serving SQLite process's inline connection: a write through the engine
        #: would hold the write lock the write-back's flush needs (as refusals found).
        self.hot = hot

    async def record(
        self,
        *,
        user_id: str,
        grant_id: str | None,
        provider_id: str | None,
        model: str,
        ledger_id: str,
        kind: str,
        reserved_micro_usd: int,
        cost_micro_usd: int,
        output_limit_tokens: int | None,
        output_tokens: int | None,
        now: float | None = None,
    ) -> str:
        oid = new_id()
        row = {
            "id": oid,
            "user_id": user_id,
            "grant_id": grant_id,
            "provider_id": provider_id,
            "model": model[:255],
            "ledger_id": ledger_id,
            "kind": kind,
            "reserved_micro_usd": reserved_micro_usd,
            "cost_micro_usd": cost_micro_usd,
            "output_limit_tokens": output_limit_tokens,
            "output_tokens": output_tokens,
            "created_at": time.time() if now is None else now,
        }
        if self.hot is not None:

            def write(conn: sqlite3.Connection) -> None:
                conn.execute(_INSERT, row)

            await self.hot.run(write, metering=True)
            return oid
        async with self.engine.begin() as conn:
            await conn.execute(t.limit_overruns.insert().values(**row))
        return oid

    async def for_user(
        self, user_id: str, *, unseen_only: bool = False, limit: int = 100
    ) -> list[Overrun]:
        """The person's overruns, newest first."""
        o = t.limit_overruns.c
        q = select(t.limit_overruns).where(o.user_id == user_id)
        if unseen_only:
            q = q.where(o.seen_at.is_(None))
        q = q.order_by(o.created_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Overrun(**dict(r._mapping)) for r in rows]

    async def mark_seen(self, user_id: str, now: float | None = None) -> int:
        """The person has seen their overruns: the dashboard's flag goes down."""
        o = t.limit_overruns.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.limit_overruns)
                .where(o.user_id == user_id, o.seen_at.is_(None))
                .values(seen_at=time.time() if now is None else now)
            )
        return int(result.rowcount or 0)

    async def by_provider(self, user_id: str) -> dict[str, ProviderMark]:
        """Each of the person's providers that ignored the output limit at least once."""
        o = t.limit_overruns.c
        q = (
            select(o.provider_id, func.count(), func.max(o.created_at))
            .where(o.user_id == user_id, o.provider_id.is_not(None))
            .group_by(o.provider_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {str(p): ProviderMark(str(p), int(n), float(last)) for p, n, last in rows}
