"""Allowance windows and the ledger: the atomic reserve/settle pair behind "no overspend".

Every debit is a single conditional UPDATE (``spent + reserved + amount <= cap``), which
both SQLite and PostgreSQL execute atomically: two gateways racing for the last cent
cannot both win, whatever process they run in. The token and grant are re-checked inside
the same transaction, so a revocation committed before a call's reservation refuses it.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyfob.store import schema as t
from keyfob.store import sqlite_hot
from keyfob.store.metering_types import (
    CredentialRevoked,
    GrantChanged,
    RateLimits,
    Refused,
    Reserved,
    ReserveRequest,
    RollingLimit,
    Settlement,
    WindowLimit,
)
from keyfob.store.records import LedgerEntry, WindowState
from keyfob.store.sqlite_hot import SqliteHotPath
from keyfob.store.sqlite_writeback import NotHere, sync_reads
from keyfob.tokens import new_id

__all__ = [
    "CredentialRevoked",
    "GrantChanged",
    "MeteringRepo",
    "RateLimits",
    "Refused",
    "ReserveRequest",
    "Reserved",
    "RollingLimit",
    "Settlement",
    "WindowLimit",
]


class MeteringRepo:
    """Reserve/settle on SQLAlchemy (the reference, used on PostgreSQL), or on the SQLite
    hot path (``sqlite_hot``) when the store runs on SQLite."""

    def __init__(self, engine: AsyncEngine, hot: SqliteHotPath | None = None) -> None:
        self.engine = engine
        self.hot = hot

    def _insert_window(self, conn: AsyncConnection, grant_id: str, w: WindowLimit) -> Any:
        values = dict(
            grant_id=grant_id,
            window_key=w.window_key,
            cap_micro_usd=w.cap_micro_usd,
            spent_micro_usd=0,
            reserved_micro_usd=0,
        )
        if conn.dialect.name == "postgresql":
            return postgresql.insert(t.allowance_windows).values(**values).on_conflict_do_nothing()
        return sqlite.insert(t.allowance_windows).values(**values).on_conflict_do_nothing()

    async def reserve(
        self,
        *,
        entry_id: str,
        token_hash: str,
        grant_id: str,
        user_id: str,
        client_id: str,
        provider_id: str | None,
        model: str,
        endpoint: str,
        streamed: bool,
        amount_micro_usd: int,
        windows: list[WindowLimit],
        rolling: list[RollingLimit] | None = None,
        rates: RateLimits | None = None,
        tokens_reserved: int | None = None,
        wallet_user_id: str | None = None,
        wallet_refill_key: str | None = None,
        downgraded_from: str | None = None,
        now: float | None = None,
        basis: float | None = None,
    ) -> Reserved | Refused:
        """Check every limit and hold ``amount_micro_usd`` on each, all or nothing.

        ``basis``: the ``updated_at`` of the grant the caller planned with. A grant edited
        since raises ``GrantChanged``; a window counter that is missing or was computed
        for another version is computed from the ledger first (``sqlite_hot.seed_window``
        has the rule)."""
        now = time.time() if now is None else now
        if self.hot is not None:
            req = ReserveRequest(
                entry_id,
                token_hash,
                grant_id,
                user_id,
                client_id,
                provider_id,
                model,
                endpoint,
                streamed,
                amount_micro_usd,
                now,
                list(windows),
                list(rolling or []),
                rates,
                tokens_reserved,
                wallet_user_id,
                wallet_refill_key,
                downgraded_from,
                basis,
            )
            return await self.reserve_hot(req)
        async with self.engine.connect() as conn:
            trans = await conn.begin()
            try:
                # FOR UPDATE (PostgreSQL) serialises the reservations of one grant, which
                # makes the ledger sums of rolling and rate limits exact; SQLite has one
                # writer anyway and SQLAlchemy leaves the clause out there.
                alive = (
                    await conn.execute(
                        select(t.grants.c.updated_at)
                        .join(t.grants, t.grants.c.id == t.tokens.c.grant_id)
                        .where(
                            t.tokens.c.token_hash == token_hash,
                            t.tokens.c.revoked_at.is_(None),
                            t.tokens.c.expires_at > now,
                            t.grants.c.id == grant_id,
                            t.grants.c.revoked_at.is_(None),
                        )
                        .with_for_update(of=t.grants)
                    )
                ).first()
                if alive is None:
                    raise CredentialRevoked
                if basis is not None and alive[0] != basis:
                    raise GrantChanged
                refusal = await self._check_ledger_limits(
                    conn, grant_id, amount_micro_usd, rolling or [], rates, tokens_reserved, now
                )
                if refusal is not None:
                    await trans.rollback()
                    return refusal
                states: list[WindowState] = []
                seeded: list[WindowLimit] = []
                for w in windows:
                    row = await self._hold(conn, grant_id, w, amount_micro_usd, basis, seeded)
                    if row is None:
                        state = await self._window(conn, grant_id, w.window_key)
                        state = WindowState(
                            state.window_key,
                            w.cap_micro_usd,
                            state.spent_micro_usd,
                            state.reserved_micro_usd,
                        )
                        refused = Refused(state, w.label or w.window_key, w.resets_at)
                        await self._refuse(conn, trans, grant_id, states, seeded, amount_micro_usd)
                        return refused
                    states.append(row)
                if wallet_user_id is not None:
                    wallet_state = await self._hold_wallet(
                        conn, wallet_user_id, amount_micro_usd, wallet_refill_key, now
                    )
                    if isinstance(wallet_state, Refused):
                        await self._refuse(conn, trans, grant_id, states, seeded, amount_micro_usd)
                        return wallet_state
                    states.append(wallet_state)
                await conn.execute(
                    insert(t.ledger).values(
                        id=entry_id,
                        grant_id=grant_id,
                        user_id=user_id,
                        client_id=client_id,
                        provider_id=provider_id,
                        model=model,
                        endpoint=endpoint,
                        streamed=streamed,
                        status="reserved",
                        reserved_micro_usd=amount_micro_usd,
                        window_keys_json=json.dumps([w.window_key for w in windows]),
                        needs_reconciliation=False,
                        created_at=now,
                        tokens_reserved=tokens_reserved,
                        from_wallet=wallet_user_id is not None,
                        downgraded_from=downgraded_from,
                    )
                )
                await trans.commit()
                return Reserved(entry_id, tuple(states))
            except BaseException:
                if trans.is_active:
                    await trans.rollback()
                raise

    async def reserve_hot(self, req: ReserveRequest) -> Reserved | Refused:
        """``reserve`` on SQLite: the serving process's in-memory decision, else one
        transaction (after the batch, in the serving process)."""
        assert self.hot is not None
        wb = self.hot.writeback
        if wb is not None:
            decided = wb.reserve(req)
            if not isinstance(decided, NotHere):
                return decided
            done = await self.hot.run_after_batch(
                functools.partial(sqlite_hot.reserve_tx, req=req), metering=True
            )
            if req.seeded:  # no suspension since the transaction: nothing decided between
                wb.attach(req.grant_id, req.seeded)
            return done
        return await self.hot.run(functools.partial(sqlite_hot.reserve_tx, req=req), metering=True)

    async def _hold(
        self,
        conn: AsyncConnection,
        grant_id: str,
        w: WindowLimit,
        amount: int,
        basis: float | None,
        seeded: list[WindowLimit],
    ) -> WindowState | None:
        """Hold ``amount`` on the window (``sqlite_hot.hold_window`` is the same rule)."""
        win = t.allowance_windows.c
        fits = [
            win.grant_id == grant_id,
            win.window_key == w.window_key,
            win.spent_micro_usd + win.reserved_micro_usd + amount <= w.cap_micro_usd,
        ]
        if w.starts_at is None or basis is None:
            await conn.execute(self._insert_window(conn, grant_id, w))
        else:
            fits.append(win.seeded_for == basis)
        hold = (
            update(t.allowance_windows)
            .where(*fits)
            .values(
                reserved_micro_usd=win.reserved_micro_usd + amount, cap_micro_usd=w.cap_micro_usd
            )
            .returning(
                win.window_key, win.cap_micro_usd, win.spent_micro_usd, win.reserved_micro_usd
            )
        )
        row = (await conn.execute(hold)).first()
        if row is None and w.starts_at is not None and basis is not None:
            current = (
                await conn.execute(
                    select(win.seeded_for).where(
                        win.grant_id == grant_id, win.window_key == w.window_key
                    )
                )
            ).first()
            if current is not None and current[0] == basis:
                return None  # current: the cap is what refused
            await self._seed(conn, grant_id, w, basis)
            seeded.append(w)
            row = (await conn.execute(hold)).first()
        return WindowState(*row) if row else None

    async def _seed(
        self, conn: AsyncConnection, grant_id: str, w: WindowLimit, basis: float
    ) -> None:
        """Compute the window's counter from the ledger (``sqlite_hot.seed_window``).

        On PostgreSQL the open reservations of the period are locked first: a
        settlement in progress finishes before they are read (and is then summed as
        settled), and one that starts later waits for this transaction and reads the
        window keys it wrote (``_settle`` reads them in its own UPDATE)."""
        assert w.starts_at is not None
        L = t.ledger.c
        cond = [L.grant_id == grant_id, L.created_at >= w.starts_at]
        if w.model is not None:
            cond.append(L.model == w.model)
        open_rows = (
            await conn.execute(
                select(L.id, L.reserved_micro_usd, L.window_keys_json)
                .where(*cond, L.status == "reserved")
                .with_for_update()
            )
        ).all()
        settled = (
            await conn.execute(
                select(func.coalesce(func.sum(func.coalesce(L.cost_micro_usd, 0)), 0)).where(
                    *cond, L.status != "reserved"
                )
            )
        ).scalar_one()
        for r in open_rows:
            keys = json.loads(r.window_keys_json)
            if w.window_key not in keys:
                await conn.execute(
                    update(t.ledger)
                    .where(L.id == r.id)
                    .values(window_keys_json=json.dumps([*keys, w.window_key]))
                )
        values = dict(
            grant_id=grant_id,
            window_key=w.window_key,
            cap_micro_usd=w.cap_micro_usd,
            spent_micro_usd=int(settled),
            reserved_micro_usd=sum(int(r.reserved_micro_usd) for r in open_rows),
            seeded_for=basis,
        )
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(t.allowance_windows).values(**values)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["grant_id", "window_key"],
                set_={
                    k: stmt.excluded[k]
                    for k in (
                        "cap_micro_usd",
                        "spent_micro_usd",
                        "reserved_micro_usd",
                        "seeded_for",
                    )
                },
            )
        )

    async def _refuse(
        self,
        conn: AsyncConnection,
        trans: Any,
        grant_id: str,
        held: list[WindowState],
        seeded: list[WindowLimit],
        amount: int,
    ) -> None:
        """Roll back; or, when windows were computed from the ledger on the way, undo only
        this call's holds and keep them (``sqlite_hot._refuse``)."""
        if not seeded:
            await trans.rollback()
            return
        win = t.allowance_windows.c
        for st in held:
            if st.window_key == "wallet":
                continue
            await conn.execute(
                update(t.allowance_windows)
                .where(win.grant_id == grant_id, win.window_key == st.window_key)
                .values(reserved_micro_usd=win.reserved_micro_usd - amount)
            )
        await trans.commit()

    async def _check_ledger_limits(
        self,
        conn: AsyncConnection,
        grant_id: str,
        amount: int,
        rolling: list[RollingLimit],
        rates: RateLimits | None,
        tokens: int | None,
        now: float,
    ) -> Refused | None:
        L = t.ledger.c
        held = case(
            (L.status == "reserved", L.reserved_micro_usd), else_=func.coalesce(L.cost_micro_usd, 0)
        )
        for lim in rolling:
            since = now - lim.seconds
            cond = [L.grant_id == grant_id, L.created_at > since]
            if lim.model is not None:
                cond.append(L.model == lim.model)
            row = (
                await conn.execute(
                    select(func.coalesce(func.sum(held), 0), func.min(L.created_at)).where(*cond)
                )
            ).first()
            used = int(row[0]) if row else 0
            if used + amount > lim.cap_micro_usd:
                oldest = row[1] if row and row[1] is not None else now
                state = WindowState(f"rolling:{lim.seconds}", lim.cap_micro_usd, used, 0)
                return Refused(state, lim.label or state.window_key, oldest + lim.seconds)
        if rates is None:
            return None
        since = now - 60
        recent = [L.grant_id == grant_id, L.created_at > since]
        if rates.requests_per_minute is not None:
            row = (
                await conn.execute(select(func.count(), func.min(L.created_at)).where(*recent))
            ).first()
            count = int(row[0]) if row else 0
            if count + 1 > rates.requests_per_minute:
                oldest = row[1] if row and row[1] is not None else now
                state = WindowState("requests_per_minute", rates.requests_per_minute, count, 0)
                return Refused(state, "requests per minute", oldest + 60)
        if rates.tokens_per_minute is not None and tokens is not None:
            used_tokens = case(
                (L.status == "reserved", func.coalesce(L.tokens_reserved, 0)),
                else_=func.coalesce(L.input_tokens, 0) + func.coalesce(L.output_tokens, 0),
            )
            row = (
                await conn.execute(
                    select(func.coalesce(func.sum(used_tokens), 0), func.min(L.created_at)).where(
                        *recent
                    )
                )
            ).first()
            used = int(row[0]) if row else 0
            if used + tokens > rates.tokens_per_minute:
                oldest = row[1] if row and row[1] is not None else now
                state = WindowState("tokens_per_minute", rates.tokens_per_minute, used, 0)
                retry = oldest + 60 if tokens <= rates.tokens_per_minute else None
                return Refused(state, "tokens per minute", retry)
        return None

    async def _hold_wallet(
        self, conn: AsyncConnection, user_id: str, amount: int, refill_key: str | None, now: float
    ) -> WindowState | Refused:
        w = t.wallets.c
        if refill_key is not None:
            await self._apply_refill(conn, user_id, refill_key, now)
        row = (
            await conn.execute(
                update(t.wallets)
                .where(w.user_id == user_id, w.balance_micro_usd - w.reserved_micro_usd >= amount)
                .values(reserved_micro_usd=w.reserved_micro_usd + amount)
                .returning(w.balance_micro_usd, w.reserved_micro_usd)
            )
        ).first()
        if row is None:
            cur = (
                await conn.execute(
                    select(w.balance_micro_usd, w.reserved_micro_usd).where(w.user_id == user_id)
                )
            ).first()
            balance, reserved = (int(cur[0]), int(cur[1])) if cur else (0, 0)
            return Refused(WindowState("wallet", balance, 0, reserved), "wallet", None)
        return WindowState("wallet", int(row[0]), 0, int(row[1]))

    async def _apply_refill(
        self, conn: AsyncConnection, user_id: str, key: str, now: float
    ) -> None:
        """Top the wallet up *to* its monthly refill, once per calendar month."""
        w = t.wallets.c
        row = (
            await conn.execute(
                select(w.balance_micro_usd, w.monthly_refill_micro_usd, w.refilled_for).where(
                    w.user_id == user_id
                )
            )
        ).first()
        if row is None or row.monthly_refill_micro_usd is None or row.refilled_for == key:
            return
        new_balance = max(int(row.balance_micro_usd), int(row.monthly_refill_micro_usd))
        done = await conn.execute(
            update(t.wallets)
            .where(w.user_id == user_id, or_(w.refilled_for.is_(None), w.refilled_for != key))
            .values(balance_micro_usd=new_balance, refilled_for=key)
        )
        if done.rowcount == 1:
            await conn.execute(
                insert(t.wallet_transactions).values(
                    id=new_id(),
                    user_id=user_id,
                    kind="refill",
                    amount_micro_usd=new_balance - int(row.balance_micro_usd),
                    balance_after_micro_usd=new_balance,
                    ledger_id=None,
                    note=f"monthly refill {key}",
                    created_at=now,
                )
            )

    async def _window(self, conn: AsyncConnection, grant_id: str, key: str) -> WindowState:
        row = (
            await conn.execute(
                select(
                    t.allowance_windows.c.window_key,
                    t.allowance_windows.c.cap_micro_usd,
                    t.allowance_windows.c.spent_micro_usd,
                    t.allowance_windows.c.reserved_micro_usd,
                ).where(
                    t.allowance_windows.c.grant_id == grant_id,
                    t.allowance_windows.c.window_key == key,
                )
            )
        ).first()
        return WindowState(*row) if row else WindowState(key, 0, 0, 0)

    async def window(self, grant_id: str, key: str) -> WindowState:
        sync_reads()
        async with self.engine.connect() as conn:
            return await self._window(conn, grant_id, key)

    async def window_now(self, grant_id: str, w: WindowLimit, basis: float) -> WindowState:
        """The window as the next reservation will see it: its counter when current,
        else what the ledger holds for its period (what the counter will be computed to;
        nothing is written here)."""
        sync_reads()
        win = t.allowance_windows.c
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(win.spent_micro_usd, win.reserved_micro_usd, win.seeded_for).where(
                        win.grant_id == grant_id, win.window_key == w.window_key
                    )
                )
            ).first()
            if row is not None and (row.seeded_for == basis or w.starts_at is None):
                return WindowState(w.window_key, w.cap_micro_usd, int(row[0]), int(row[1]))
            if w.starts_at is None:
                return WindowState(w.window_key, w.cap_micro_usd, 0, 0)
            L = t.ledger.c
            cond = [L.grant_id == grant_id, L.created_at >= w.starts_at]
            if w.model is not None:
                cond.append(L.model == w.model)
            held = (
                await conn.execute(
                    select(
                        func.coalesce(
                            func.sum(
                                case(
                                    (L.status == "reserved", 0),
                                    else_=func.coalesce(L.cost_micro_usd, 0),
                                )
                            ),
                            0,
                        ),
                        func.coalesce(
                            func.sum(case((L.status == "reserved", L.reserved_micro_usd), else_=0)),
                            0,
                        ),
                    ).where(*cond)
                )
            ).first()
        spent, reserved = (int(held[0]), int(held[1])) if held else (0, 0)
        return WindowState(w.window_key, w.cap_micro_usd, spent, reserved)

    async def settle(
        self, entry_id: str, s: Settlement, now: float | None = None
    ) -> tuple[WindowState, ...]:
        """Turn a reservation into a charge. Idempotent: a settled entry is left alone."""
        now = time.time() if now is None else now
        if self.hot is not None:
            wb = self.hot.writeback
            if wb is not None:
                done = wb.settle(entry_id, s, now)
                if done is not None:
                    return done
                return await self.hot.run_after_batch(
                    functools.partial(sqlite_hot.settle_tx, entry_id=entry_id, s=s, now=now),
                    metering=True,
                )
            return await self.hot.run(
                functools.partial(sqlite_hot.settle_tx, entry_id=entry_id, s=s, now=now),
                metering=True,
            )
        async with self.engine.begin() as conn:
            return await self._settle(conn, entry_id, s, now)

    async def _settle(
        self, conn: AsyncConnection, entry_id: str, s: Settlement, now: float
    ) -> tuple[WindowState, ...]:
        # One statement reads the window keys as it moves the row out of ``reserved``: a
        # window computed from the ledger meanwhile (``_seed``, which locks the row) has
        # added its key by then.
        row = (
            await conn.execute(
                update(t.ledger)
                .where(t.ledger.c.id == entry_id, t.ledger.c.status == "reserved")
                .values(
                    status=s.status,
                    cost_micro_usd=s.cost_micro_usd,
                    usage_source=s.usage_source,
                    input_tokens=s.input_tokens,
                    output_tokens=s.output_tokens,
                    cached_input_tokens=s.cached_input_tokens,
                    reasoning_tokens=s.reasoning_tokens,
                    needs_reconciliation=s.needs_reconciliation,
                    upstream_status=s.upstream_status,
                    error=s.error,
                    settled_at=now,
                )
                .returning(
                    t.ledger.c.grant_id,
                    t.ledger.c.reserved_micro_usd,
                    t.ledger.c.window_keys_json,
                    t.ledger.c.from_wallet,
                    t.ledger.c.user_id,
                )
            )
        ).first()
        if row is None:
            return ()
        states = []
        win = t.allowance_windows.c
        for key in json.loads(row.window_keys_json):
            res = await conn.execute(
                update(t.allowance_windows)
                .where(win.grant_id == row.grant_id, win.window_key == key)
                .values(
                    reserved_micro_usd=win.reserved_micro_usd - row.reserved_micro_usd,
                    spent_micro_usd=win.spent_micro_usd + s.cost_micro_usd,
                )
                .returning(
                    win.window_key, win.cap_micro_usd, win.spent_micro_usd, win.reserved_micro_usd
                )
            )
            got = res.first()
            if got is not None:
                states.append(WindowState(*got))
        if row.from_wallet:
            w = t.wallets.c
            res = await conn.execute(
                update(t.wallets)
                .where(w.user_id == row.user_id)
                .values(
                    reserved_micro_usd=w.reserved_micro_usd - row.reserved_micro_usd,
                    balance_micro_usd=w.balance_micro_usd - s.cost_micro_usd,
                )
                .returning(w.balance_micro_usd, w.reserved_micro_usd)
            )
            got = res.first()
            if got is not None:
                states.append(WindowState("wallet", int(got[0]), 0, int(got[1])))
                if s.cost_micro_usd:
                    await conn.execute(
                        insert(t.wallet_transactions).values(
                            id=new_id(),
                            user_id=row.user_id,
                            kind="charge",
                            amount_micro_usd=-s.cost_micro_usd,
                            balance_after_micro_usd=int(got[0]),
                            ledger_id=entry_id,
                            note=None,
                            created_at=now,
                        )
                    )
        return tuple(states)

    async def reconcile_dead(self, started_before: float) -> int:
        sync_reads()
        """Charge the reservation of calls that never settled (their process died).

        Rule: a reservation still open when its process is gone is charged in full and
        flagged ``needs_reconciliation``; it is never dropped (no lost usage) and never
        charged twice (settlement only moves rows out of ``reserved``).
        """
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(t.ledger.c.id, t.ledger.c.reserved_micro_usd).where(
                        t.ledger.c.status == "reserved", t.ledger.c.created_at < started_before
                    )
                )
            ).all()
            now = time.time()
            for r in rows:
                await self._settle(
                    conn,
                    r.id,
                    Settlement(
                        status="charged_reservation",
                        cost_micro_usd=r.reserved_micro_usd,
                        usage_source="reservation",
                        needs_reconciliation=True,
                        error="gateway stopped before the call settled",
                    ),
                    now,
                )
        return len(rows)

    async def entry(self, entry_id: str) -> LedgerEntry | None:
        sync_reads()
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.ledger).where(t.ledger.c.id == entry_id))).first()
        return LedgerEntry.of(row) if row else None

    async def entries(
        self, *, user_id: str | None = None, grant_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        sync_reads()
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
        sync_reads()
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


async def rolling_used(
    engine: AsyncEngine, grant_id: str, seconds: int, model: str | None, now: float
) -> tuple[int, float | None]:
    """Spend held or charged in the last ``seconds`` (and the oldest such call's time)."""
    sync_reads()
    L = t.ledger.c
    held = case(
        (L.status == "reserved", L.reserved_micro_usd), else_=func.coalesce(L.cost_micro_usd, 0)
    )
    cond = [L.grant_id == grant_id, L.created_at > now - seconds]
    if model is not None:
        cond.append(L.model == model)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.coalesce(func.sum(held), 0), func.min(L.created_at)).where(*cond)
            )
        ).first()
    return (int(row[0]), row[1]) if row else (0, None)


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
    sync_reads()
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


async def recent_activity(
    engine: AsyncEngine, grant_id: str, now: float
) -> tuple[int, int, float | None]:
    """Calls and tokens of the last minute (as the rate limits count them)."""
    sync_reads()
    L = t.ledger.c
    tokens = case(
        (L.status == "reserved", func.coalesce(L.tokens_reserved, 0)),
        else_=func.coalesce(L.input_tokens, 0) + func.coalesce(L.output_tokens, 0),
    )
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.count(), func.coalesce(func.sum(tokens), 0), func.min(L.created_at)
                ).where(L.grant_id == grant_id, L.created_at > now - 60)
            )
        ).first()
    if row is None:
        return 0, 0, None
    return int(row[0]), int(row[1]), row[2]


async def typical_output_tokens(
    engine: AsyncEngine, grant_id: str, model: str, sample: int = 50
) -> int | None:
    """The mean output tokens of the grant's recent settled calls to ``model``."""
    sync_reads()
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
