"""Read-only queries behind the person's pages: spend per app over a span, spend per day
(stacked by app or model), one app's calls page by page, last use, refused calls.

Nothing here writes money. Every query first flushes this thread's pending write-back
batch (``synced``), so a page shows every call that has ended. Days are the person's
own calendar days: the ledger is summed in SQL per 15-minute bucket (every real UTC
offset is a whole number of quarter hours) and the buckets are folded into local days in
Python, so a 90-day chart reads a few thousand rows whatever the number of calls.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyfob.allowance.windows import zone
from keyfob.store import schema as t
from keyfob.store.metering.writeback import synced
from keyfob.store.records import LedgerEntry, Refusal
from keyfob.store.sqlite_hot import SqliteHotPath
from keyfob.tokens import new_id

BUCKET_S = 900
#: Repeats of one refusal (same grant and limit) within this many seconds share a row.
REFUSAL_COALESCE_S = 60.0
#: Refusals older than this are dropped when new ones are written.
REFUSAL_KEEP_S = 90 * 86400


def _charged() -> Any:
    """What a ledger row counts for: its cost, or its hold while the call is in flight."""
    L = t.ledger.c
    return case(
        (L.status == "reserved", L.reserved_micro_usd), else_=func.coalesce(L.cost_micro_usd, 0)
    )


def _bucket(conn: AsyncConnection) -> Any:
    """The 15-minute bucket of a row, floored the same way on SQLite and PostgreSQL."""
    c = t.ledger.c.created_at
    if conn.dialect.name == "postgresql":
        return cast(func.floor(c / BUCKET_S), Integer)
    return cast(c / BUCKET_S, Integer)  # SQLite truncates; times are positive


async def spend_by_grant(
    engine: AsyncEngine, user_id: str, since: float, until: float | None = None
) -> dict[str, int]:
    """Micro-USD charged per grant between ``since`` and ``until`` (in-flight calls at
    their hold, as the allowance counts them)."""
    await synced()
    L = t.ledger.c
    cond = [L.user_id == user_id, L.created_at >= since]
    if until is not None:
        cond.append(L.created_at < until)
    q = select(L.grant_id, func.coalesce(func.sum(_charged()), 0)).where(*cond)
    async with engine.connect() as conn:
        rows = (await conn.execute(q.group_by(L.grant_id))).all()
    return {r[0]: int(r[1]) for r in rows}


async def last_used(engine: AsyncEngine, user_id: str) -> dict[str, float]:
    """When each of the person's grants last made a call."""
    await synced()
    L = t.ledger.c
    q = select(L.grant_id, func.max(L.created_at)).where(L.user_id == user_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(q.group_by(L.grant_id))).all()
    return {r[0]: float(r[1]) for r in rows}


async def app_names(engine: AsyncEngine, user_id: str) -> dict[str, str]:
    """The names of the apps a person ever allowed, by client id (not every client of a
    hosted server: only this person's)."""
    q = (
        select(t.clients.c.id, t.clients.c.name)
        .join(t.grants, t.grants.c.client_id == t.clients.c.id)
        .where(t.grants.c.user_id == user_id)
        .distinct()
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True)
class DailySeries:
    """Spend per local day and key (an app name or a model), for a stacked chart."""

    days: list[date]
    keys: list[str]
    #: micro-USD per (day, key); absent pairs are zero.
    values: dict[tuple[date, str], int]

    def total(self, key: str | None = None) -> int:
        return sum(v for (_d, k), v in self.values.items() if key is None or k == key)

    def day_total(self, day: date) -> int:
        return sum(v for (d, _k), v in self.values.items() if d == day)


async def daily_spend(
    engine: AsyncEngine,
    *,
    user_id: str,
    timezone: str,
    first_day: date,
    last_day: date,
    by: str,
    grant_id: str | None = None,
) -> DailySeries:
    """Spend per local day from ``first_day`` to ``last_day`` (inclusive), by ``app``
    (the app's name, one series per grant) or ``model``."""
    await synced()
    tz = zone(timezone)
    since = datetime(first_day.year, first_day.month, first_day.day, tzinfo=tz).timestamp()
    end = datetime.fromordinal(last_day.toordinal() + 1).replace(tzinfo=tz).timestamp()
    L = t.ledger.c
    key_col = L.model if by == "model" else L.grant_id
    cond = [L.user_id == user_id, L.created_at >= since, L.created_at < end]
    if grant_id is not None:
        cond.append(L.grant_id == grant_id)
    async with engine.connect() as conn:
        bucket = _bucket(conn).label("bucket")
        q = (
            select(bucket, key_col.label("key"), func.sum(_charged()).label("micro"))
            .where(and_(*cond))
            .group_by(bucket, key_col)
        )
        rows = (await conn.execute(q)).all()
        names: dict[str, str] = {}
        if by != "model":
            named = (
                await conn.execute(
                    select(t.grants.c.id, t.clients.c.name)
                    .join(t.clients, t.clients.c.id == t.grants.c.client_id, isouter=True)
                    .where(t.grants.c.user_id == user_id)
                )
            ).all()
            names = {g: n or g for g, n in named}
    values: dict[tuple[date, str], int] = defaultdict(int)
    for b, key, micro in rows:
        day = datetime.fromtimestamp(int(b) * BUCKET_S, UTC).astimezone(tz).date()
        values[(day, names.get(key, key) if by != "model" else key)] += int(micro or 0)
    days = [date.fromordinal(o) for o in range(first_day.toordinal(), last_day.toordinal() + 1)]
    totals: dict[str, int] = defaultdict(int)
    for (_d, k), v in values.items():
        totals[k] += v
    keys = sorted(totals, key=lambda k: (-totals[k], k))
    return DailySeries(days, keys, dict(values))


async def grant_calls(
    engine: AsyncEngine,
    grant_id: str,
    *,
    since: float | None = None,
    until: float | None = None,
    before: tuple[float, str] | None = None,
    limit: int = 50,
) -> list[LedgerEntry]:
    """One app's calls, newest first; ``before`` (created_at, id) pages on (keyset)."""
    await synced()
    L = t.ledger.c
    cond = [L.grant_id == grant_id]
    if since is not None:
        cond.append(L.created_at >= since)
    if until is not None:
        cond.append(L.created_at < until)
    if before is not None:
        at, entry_id = before
        cond.append((L.created_at < at) | and_(L.created_at == at, L.id < entry_id))
    q = select(t.ledger).where(*cond).order_by(L.created_at.desc(), L.id.desc()).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [LedgerEntry.of(r) for r in rows]


async def grant_totals(
    engine: AsyncEngine, grant_id: str, since: float | None = None, until: float | None = None
) -> dict[str, int]:
    """Calls, tokens and micro-USD of one grant over a span (for the app page)."""
    await synced()
    L = t.ledger.c
    cond = [L.grant_id == grant_id]
    if since is not None:
        cond.append(L.created_at >= since)
    if until is not None:
        cond.append(L.created_at < until)
    q = select(
        func.count(),
        func.coalesce(func.sum(_charged()), 0),
        func.coalesce(func.sum(L.input_tokens), 0),
        func.coalesce(func.sum(L.output_tokens), 0),
    ).where(*cond)
    async with engine.connect() as conn:
        row = (await conn.execute(q)).one()
    return {
        "calls": int(row[0]),
        "cost_micro_usd": int(row[1]),
        "input_tokens": int(row[2]),
        "output_tokens": int(row[3]),
    }


class RefusalsRepo:
    """Refused calls, written off the request path and coalesced (see module docs)."""

    def __init__(self, engine: AsyncEngine, hot: SqliteHotPath | None = None) -> None:
        self.engine = engine
        #: The serving SQLite process writes through its inline connection, the one the
        #: write-back uses: a second connection's transaction would hold the write lock
        #: the write-back's flush needs (it waits for no one), delaying settled rows.
        self.hot = hot

    async def record(
        self,
        *,
        user_id: str,
        grant_id: str,
        client_id: str,
        model: str,
        limit_label: str,
        window_key: str,
        needed_micro_usd: int,
        left_micro_usd: int,
        retry_at: float | None,
        count: int = 1,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        row = {
            "id": new_id(),
            "user_id": user_id,
            "grant_id": grant_id,
            "client_id": client_id,
            "model": model[:255],
            "limit_label": limit_label[:255],
            "window_key": window_key[:255],
            "needed_micro_usd": needed_micro_usd,
            "left_micro_usd": left_micro_usd,
            "retry_at": retry_at,
            "count": count,
            "created_at": now,
            "last_at": now,
        }
        if self.hot is not None:

            def write(conn: sqlite3.Connection) -> None:
                bumped = conn.execute(
                    "UPDATE refusals SET count = count + :count, last_at = :last_at, "
                    "needed_micro_usd = :needed_micro_usd, left_micro_usd = :left_micro_usd, "
                    "retry_at = :retry_at WHERE grant_id = :grant_id AND window_key = "
                    ":window_key AND model = :model AND last_at > :since",
                    {**row, "since": now - REFUSAL_COALESCE_S},
                )
                if bumped.rowcount:
                    return
                conn.execute(
                    "INSERT INTO refusals (id, user_id, grant_id, client_id, model, "
                    "limit_label, window_key, needed_micro_usd, left_micro_usd, retry_at, "
                    "count, created_at, last_at) VALUES (:id, :user_id, :grant_id, "
                    ":client_id, :model, :limit_label, :window_key, :needed_micro_usd, "
                    ":left_micro_usd, :retry_at, :count, :created_at, :last_at)",
                    row,
                )
                conn.execute(
                    "DELETE FROM refusals WHERE user_id = :user_id AND last_at < :before",
                    {"user_id": user_id, "before": now - REFUSAL_KEEP_S},
                )

            await self.hot.run(write, metering=True)
            return
        r = t.refusals.c
        async with self.engine.begin() as conn:
            bumped = await conn.execute(
                update(t.refusals)
                .where(
                    r.grant_id == grant_id,
                    r.window_key == window_key,
                    r.model == row["model"],
                    r.last_at > now - REFUSAL_COALESCE_S,
                )
                .values(
                    count=r.count + count,
                    last_at=now,
                    needed_micro_usd=needed_micro_usd,
                    left_micro_usd=left_micro_usd,
                    retry_at=retry_at,
                )
            )
            if bumped.rowcount:
                return
            await conn.execute(insert(t.refusals).values(**row))
            await conn.execute(
                t.refusals.delete().where(r.user_id == user_id, r.last_at < now - REFUSAL_KEEP_S)
            )

    async def recent(
        self, user_id: str, *, grant_id: str | None = None, limit: int = 10
    ) -> list[Refusal]:
        r = t.refusals.c
        cond = [r.user_id == user_id]
        if grant_id is not None:
            cond.append(r.grant_id == grant_id)
        q = select(t.refusals).where(*cond).order_by(r.last_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Refusal.of(row) for row in rows]
