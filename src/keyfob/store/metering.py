"""Allowance windows and the ledger: the atomic reserve/settle pair behind "no overspend".

Every debit is a single conditional UPDATE (``spent + reserved + amount <= cap``), which
both SQLite and PostgreSQL execute atomically: two gateways racing for the last cent
cannot both win, whatever process they run in. The token and grant are re-checked inside
the same transaction, so a revocation committed before a call's reservation refuses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyfob.store import schema as t
from keyfob.store.records import LedgerEntry, WindowState


@dataclass(frozen=True)
class WindowLimit:
    window_key: str
    cap_micro_usd: int


@dataclass(frozen=True)
class Reserved:
    entry_id: str
    windows: tuple[WindowState, ...]


@dataclass(frozen=True)
class Refused:
    """The reservation did not fit: the window that refused and its state."""

    window: WindowState


class CredentialRevoked(Exception):
    """The token or its grant ended before this call could reserve."""


@dataclass(frozen=True)
class Settlement:
    status: str
    cost_micro_usd: int
    usage_source: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    needs_reconciliation: bool = False
    upstream_status: int | None = None
    error: str | None = None


class MeteringRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def _insert_window(self, conn: AsyncConnection, grant_id: str, w: WindowLimit) -> Any:
        values = dict(grant_id=grant_id, window_key=w.window_key, cap_micro_usd=w.cap_micro_usd,
                      spent_micro_usd=0, reserved_micro_usd=0)
        if conn.dialect.name == "postgresql":
            return postgresql.insert(t.allowance_windows).values(**values).on_conflict_do_nothing()
        return sqlite.insert(t.allowance_windows).values(**values).on_conflict_do_nothing()

    async def reserve(self, *, entry_id: str, token_hash: str, grant_id: str, user_id: str,
                      client_id: str, provider_id: str | None, model: str, endpoint: str,
                      streamed: bool, amount_micro_usd: int, windows: list[WindowLimit],
                      now: float | None = None) -> Reserved | Refused:
        now = time.time() if now is None else now
        async with self.engine.connect() as conn:
            trans = await conn.begin()
            try:
                alive = (await conn.execute(
                    select(t.tokens.c.token_hash)
                    .join(t.grants, t.grants.c.id == t.tokens.c.grant_id)
                    .where(t.tokens.c.token_hash == token_hash,
                           t.tokens.c.revoked_at.is_(None), t.tokens.c.expires_at > now,
                           t.grants.c.id == grant_id, t.grants.c.revoked_at.is_(None)))).first()
                if alive is None:
                    raise CredentialRevoked
                states: list[WindowState] = []
                for w in windows:
                    await conn.execute(self._insert_window(conn, grant_id, w))
                    win = t.allowance_windows.c
                    result = await conn.execute(
                        update(t.allowance_windows)
                        .where(win.grant_id == grant_id, win.window_key == w.window_key,
                               win.spent_micro_usd + win.reserved_micro_usd + amount_micro_usd
                               <= win.cap_micro_usd)
                        .values(reserved_micro_usd=win.reserved_micro_usd + amount_micro_usd)
                        .returning(win.window_key, win.cap_micro_usd, win.spent_micro_usd,
                                   win.reserved_micro_usd))
                    row = result.first()
                    if row is None:
                        state = await self._window(conn, grant_id, w.window_key)
                        await trans.rollback()
                        return Refused(state)
                    states.append(WindowState(*row))
                await conn.execute(insert(t.ledger).values(
                    id=entry_id, grant_id=grant_id, user_id=user_id, client_id=client_id,
                    provider_id=provider_id, model=model, endpoint=endpoint, streamed=streamed,
                    status="reserved", reserved_micro_usd=amount_micro_usd,
                    window_keys_json=json.dumps([w.window_key for w in windows]),
                    needs_reconciliation=False, created_at=now))
                await trans.commit()
                return Reserved(entry_id, tuple(states))
            except BaseException:
                if trans.is_active:
                    await trans.rollback()
                raise

    async def _window(self, conn: AsyncConnection, grant_id: str, key: str) -> WindowState:
        row = (await conn.execute(select(
            t.allowance_windows.c.window_key, t.allowance_windows.c.cap_micro_usd,
            t.allowance_windows.c.spent_micro_usd, t.allowance_windows.c.reserved_micro_usd)
            .where(t.allowance_windows.c.grant_id == grant_id,
                   t.allowance_windows.c.window_key == key))).first()
        return WindowState(*row) if row else WindowState(key, 0, 0, 0)

    async def window(self, grant_id: str, key: str) -> WindowState:
        async with self.engine.connect() as conn:
            return await self._window(conn, grant_id, key)

    async def settle(self, entry_id: str, s: Settlement,
                     now: float | None = None) -> tuple[WindowState, ...]:
        """Turn a reservation into a charge. Idempotent: a settled entry is left alone."""
        now = time.time() if now is None else now
        async with self.engine.begin() as conn:
            return await self._settle(conn, entry_id, s, now)

    async def _settle(self, conn: AsyncConnection, entry_id: str, s: Settlement,
                      now: float) -> tuple[WindowState, ...]:
        row = (await conn.execute(select(
            t.ledger.c.grant_id, t.ledger.c.reserved_micro_usd, t.ledger.c.window_keys_json)
            .where(t.ledger.c.id == entry_id, t.ledger.c.status == "reserved"))).first()
        if row is None:
            return ()
        result = await conn.execute(update(t.ledger).where(
            t.ledger.c.id == entry_id, t.ledger.c.status == "reserved").values(
            status=s.status, cost_micro_usd=s.cost_micro_usd, usage_source=s.usage_source,
            input_tokens=s.input_tokens, output_tokens=s.output_tokens,
            cached_input_tokens=s.cached_input_tokens, reasoning_tokens=s.reasoning_tokens,
            needs_reconciliation=s.needs_reconciliation, upstream_status=s.upstream_status,
            error=s.error, settled_at=now))
        if result.rowcount != 1:
            return ()
        states = []
        win = t.allowance_windows.c
        for key in json.loads(row.window_keys_json):
            res = await conn.execute(
                update(t.allowance_windows)
                .where(win.grant_id == row.grant_id, win.window_key == key)
                .values(reserved_micro_usd=win.reserved_micro_usd - row.reserved_micro_usd,
                        spent_micro_usd=win.spent_micro_usd + s.cost_micro_usd)
                .returning(win.window_key, win.cap_micro_usd, win.spent_micro_usd,
                           win.reserved_micro_usd))
            got = res.first()
            if got is not None:
                states.append(WindowState(*got))
        return tuple(states)

    async def reconcile_dead(self, started_before: float) -> int:
        """Charge the reservation of calls that never settled (their process died).

        Rule: a reservation still open when its process is gone is charged in full and
        flagged ``needs_reconciliation``; it is never dropped (no lost usage) and never
        charged twice (settlement only moves rows out of ``reserved``).
        """
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(t.ledger.c.id, t.ledger.c.reserved_micro_usd)
                    .where(t.ledger.c.status == "reserved",
                           t.ledger.c.created_at < started_before))).all()
            now = time.time()
            for r in rows:
                await self._settle(conn, r.id, Settlement(
                    status="charged_reservation", cost_micro_usd=r.reserved_micro_usd,
                    usage_source="reservation", needs_reconciliation=True,
                    error="gateway stopped before the call settled"), now)
        return len(rows)

    async def entry(self, entry_id: str) -> LedgerEntry | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.ledger).where(t.ledger.c.id == entry_id))).first()
        return LedgerEntry.of(row) if row else None

    async def entries(self, *, user_id: str | None = None, grant_id: str | None = None,
                      limit: int = 1000) -> list[LedgerEntry]:
        q = select(t.ledger)
        if user_id:
            q = q.where(t.ledger.c.user_id == user_id)
        if grant_id:
            q = q.where(t.ledger.c.grant_id == grant_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(t.ledger.c.created_at.desc()).limit(limit))).all()
        return [LedgerEntry.of(r) for r in rows]

    async def usage_by_app_model(self, user_id: str,
                                 since: float | None = None) -> list[dict[str, Any]]:
        """Spend per app and model: calls, tokens and micro-USD (settled and pending)."""
        L = t.ledger.c
        cond = [L.user_id == user_id]
        if since is not None:
            cond.append(L.created_at >= since)
        q = (select(L.client_id, t.clients.c.name.label("app"), L.model,
                    func.count().label("calls"),
                    func.coalesce(func.sum(L.cost_micro_usd), 0).label("cost_micro_usd"),
                    func.coalesce(func.sum(L.input_tokens), 0).label("input_tokens"),
                    func.coalesce(func.sum(L.output_tokens), 0).label("output_tokens"),
                    func.sum(case((L.needs_reconciliation.is_(True), 1), else_=0)).label("flagged"))
             .join(t.clients, t.clients.c.id == L.client_id)
             .where(and_(*cond)).group_by(L.client_id, t.clients.c.name, L.model)
             .order_by(t.clients.c.name, L.model))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [dict(r._mapping) for r in rows]
