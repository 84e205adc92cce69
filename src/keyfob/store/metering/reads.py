"""Reads of the ledger and the counters through SQLAlchemy, the same on SQLite and
PostgreSQL: pages, exports, the allowance API, the revocation watch, webhooks.

Not the hot path (reserve and settle are the backends'). Every read first writes this
thread's pending write-back batch (``synced``), so a reader in the serving process
sees every call that has ended.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.metering import rules
from keyfob.metering.types import Limit, WindowState
from keyfob.store import schema as t
from keyfob.store.metering.writeback import synced
from keyfob.store.records import LedgerEntry


class LedgerReads:
    """The reads every metering backend offers (``store.ledger``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def states(self, limits: Sequence[Limit], basis: float | None) -> list[WindowState]:
        """Each limit as the next reservation will see it (``values`` summed)."""
        return [
            rules.state_of(lim, sum(v[0] for v in vals), sum(v[1] for v in vals))
            for lim, vals in zip(limits, await self.values(limits, basis), strict=True)
        ]

    async def values(
        self, limits: Sequence[Limit], basis: float | None
    ) -> list[list[tuple[int, int]]]:
        """(spent, reserved) of each counter of each limit as the next reservation will
        see it: as stored when current, else what the ledger holds for its period (what
        it will be computed to; nothing is written here)."""
        await synced()
        out: list[list[tuple[int, int]]] = []
        c_ = t.counters.c
        async with self.engine.connect() as conn:
            for lim in limits:
                vals = []
                for c in lim.counters:
                    row = (
                        await conn.execute(
                            select(c_.spent, c_.reserved, c_.seeded_for).where(
                                c_.scope == c.scope, c_.key == c.key
                            )
                        )
                    ).first()
                    if row is not None and rules.usable_as_stored(c, row[2], basis):
                        vals.append((int(row[0]), int(row[1])))
                    elif row is None and rules.zero_when_missing(c, basis):
                        vals.append((0, 0))
                    else:
                        sql, args = rules.seed_sql(c)
                        for i in range(len(args)):
                            sql = sql.replace("?", f":p{i}", 1)
                        got = (
                            await conn.execute(text(sql), {f"p{i}": a for i, a in enumerate(args)})
                        ).first()
                        assert got is not None
                        vals.append((int(got[0]), int(got[1])))
                out.append(vals)
        return out

    async def counter(self, scope: str, key: str) -> tuple[int, int]:
        """(spent, reserved) of one stored counter ((0, 0) when it has no row)."""
        await synced()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.counters.c.spent, t.counters.c.reserved).where(
                        t.counters.c.scope == scope, t.counters.c.key == key
                    )
                )
            ).first()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def entry(self, entry_id: str) -> LedgerEntry | None:
        await synced()
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.ledger).where(t.ledger.c.id == entry_id))).first()
        return LedgerEntry.of(row) if row else None

    async def entries(
        self, *, user_id: str | None = None, grant_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        await synced()
        q = select(t.ledger)
        if user_id:
            q = q.where(t.ledger.c.user_id == user_id)
        if grant_id:
            q = q.where(t.ledger.c.grant_id == grant_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(t.ledger.c.created_at.desc()).limit(limit))).all()
        return [LedgerEntry.of(r) for r in rows]

    async def usage_by_app_model(
        self, user_id: str, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Spend per app and model: calls, tokens and micro-USD (settled and pending)."""
        await synced()
        L = t.ledger.c
        cond = [L.user_id == user_id]
        if since is not None:
            cond.append(L.created_at >= since)
        q = (
            select(
                L.client_id,
                t.clients.c.name.label("app"),
                L.model,
                func.count().label("calls"),
                func.coalesce(func.sum(L.cost_micro_usd), 0).label("cost_micro_usd"),
                func.coalesce(func.sum(L.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(L.output_tokens), 0).label("output_tokens"),
                func.sum(case((L.needs_reconciliation.is_(True), 1), else_=0)).label("flagged"),
            )
            .join(t.clients, t.clients.c.id == L.client_id)
            .where(and_(*cond))
            .group_by(L.client_id, t.clients.c.name, L.model)
            .order_by(t.clients.c.name, L.model)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [dict(r._mapping) for r in rows]


async def live_tokens(engine: AsyncEngine, pairs: set[tuple[str, str]], now: float) -> set[str]:
    """The token hashes among ``pairs`` (token hash, grant id) whose token and grant are
    both live: one indexed query per 500 pairs (the revocation watch of streams)."""
    alive: set[str] = set()
    items = sorted(pairs)
    async with engine.connect() as conn:
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            rows = await conn.execute(
                select(t.tokens.c.token_hash, t.tokens.c.grant_id)
                .join(t.grants, t.grants.c.id == t.tokens.c.grant_id)
                .where(
                    t.tokens.c.token_hash.in_([th for th, _g in chunk]),
                    t.tokens.c.revoked_at.is_(None),
                    t.tokens.c.expires_at > now,
                    t.grants.c.revoked_at.is_(None),
                )
            )
            wanted = set(chunk)
            alive.update(th for th, gid in rows.all() if (th, gid) in wanted)
    return alive


async def mark_webhook(
    engine: AsyncEngine, grant_id: str, window_key: str, threshold: int, now: float
) -> bool:
    """Record that a threshold was passed; True only the first time (send once)."""
    values = dict(grant_id=grant_id, window_key=window_key, threshold=threshold, created_at=now)
    async with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        result = await conn.execute(
            dialect.insert(t.webhook_events).values(**values).on_conflict_do_nothing()
        )
    return result.rowcount == 1


async def webhook_delivered(
    engine: AsyncEngine, grant_id: str, window_key: str, threshold: int, error: str | None
) -> None:
    w = t.webhook_events.c
    async with engine.begin() as conn:
        await conn.execute(
            update(t.webhook_events)
            .where(w.grant_id == grant_id, w.window_key == window_key, w.threshold == threshold)
            .values(delivered_at=None if error else time.time(), last_error=error)
        )


async def usage_rows(
    engine: AsyncEngine,
    *,
    user_id: str,
    grant_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[dict[str, Any]]:
    """Ledger rows (joined with the app's name) for usage reports, oldest first."""
    await synced()
    L = t.ledger.c
    cond = [L.user_id == user_id]
    if grant_id is not None:
        cond.append(L.grant_id == grant_id)
    if since is not None:
        cond.append(L.created_at >= since)
    if until is not None:
        cond.append(L.created_at < until)
    q = (
        select(
            L.id,
            L.client_id,
            t.clients.c.name.label("app"),
            L.model,
            L.status,
            L.created_at,
            L.cost_micro_usd,
            L.reserved_micro_usd,
            L.input_tokens,
            L.output_tokens,
            L.cached_input_tokens,
            L.reasoning_tokens,
            L.needs_reconciliation,
            L.downgraded_from,
            L.streamed,
            L.endpoint,
        )
        .join(t.clients, t.clients.c.id == L.client_id, isouter=True)
        .where(and_(*cond))
        .order_by(L.created_at)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [dict(r._mapping) for r in rows]


async def typical_output_tokens(
    engine: AsyncEngine, grant_id: str, model: str, sample: int = 50
) -> int | None:
    """The mean output tokens of the grant's recent settled calls to ``model``."""
    await synced()
    L = t.ledger.c
    recent = (
        select(L.output_tokens)
        .where(L.grant_id == grant_id, L.model == model, L.output_tokens.is_not(None))
        .order_by(L.created_at.desc())
        .limit(sample)
        .subquery()
    )
    async with engine.connect() as conn:
        value = (await conn.execute(select(func.avg(recent.c.output_tokens)))).scalar()
    return round(float(value)) if value is not None else None
