"""Metering on SQLite as plain ``sqlite3`` transactions: the rules of ``metering.rules``
applied to the ``counters`` table, one write transaction per reservation and per
settlement.

Used by every SQLite opener that does not serve the database (the CLI, scripts, tests)
and, for what it cannot decide in memory (computing counters from the ledger, a
monthly wallet refill), by the serving process's write-back (``writeback.py``), which
also replays its journal through ``settle_tx``. SQLite has one writer at a time, so a
transaction's reads and writes cannot interleave with another's: every check is exact.

Why plain ``sqlite3`` and not SQLAlchemy: the benchmark measured about 2.2 ms of CPU per
reserve+settle through SQLAlchemy + aiosqlite against tens of microseconds here
(docs/BENCHMARKS.md); the statements run inline on the event loop (``SqliteHotPath``).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Sequence

from keyfob.metering import rules
from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    CounterState,
    CredentialRevoked,
    GrantChanged,
    Refill,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
    wallet_scope,
)
from keyfob.store.sqlite_hot import Busy, Rollback, SqliteHotPath
from keyfob.tokens import new_id

ALIVE = (
    "SELECT tokens.expires_at, grants.updated_at FROM tokens "
    "JOIN grants ON grants.id = tokens.grant_id "
    "WHERE tokens.token_hash = ? AND tokens.revoked_at IS NULL AND tokens.expires_at > ? "
    "AND grants.id = ? AND grants.revoked_at IS NULL"
)
COUNTER = "SELECT spent, reserved, seeded_for FROM counters WHERE scope = ? AND key = ?"
#: Add to a counter, creating it (computed for ``seeded_for``) when it is missing.
ADD = (
    "INSERT INTO counters (scope, key, spent, reserved, seeded_for, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET "
    "spent = spent + excluded.spent, reserved = reserved + excluded.reserved"
)
SET_COUNTER = (
    "INSERT INTO counters (scope, key, spent, reserved, seeded_for, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET "
    "spent = excluded.spent, reserved = excluded.reserved, seeded_for = excluded.seeded_for"
)
COLUMNS = (
    "id, grant_id, user_id, client_id, provider_id, model, endpoint, streamed, status, "
    "reserved_micro_usd, window_keys_json, needs_reconciliation, created_at, "
    "tokens_reserved, from_wallet, downgraded_from, instance_id, cost_micro_usd, "
    "usage_source, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, "
    "upstream_status, error, settled_at"
)
#: A ledger row as a list in ``COLUMNS`` order (the write-back batches such lists).
INSERT_ROW = f"INSERT OR IGNORE INTO ledger ({COLUMNS}) VALUES ({', '.join('?' * 26)})"  # noqa: S608 (constants only)
STATUS, KEYS, NEEDS_RECON, SETTLED_FROM = 8, 10, 11, 17
SETTLE_ROW = (
    "UPDATE ledger SET status = ?, cost_micro_usd = ?, usage_source = ?, input_tokens = ?, "
    "output_tokens = ?, cached_input_tokens = ?, reasoning_tokens = ?, "
    "needs_reconciliation = ?, upstream_status = ?, error = ?, settled_at = ? "
    "WHERE id = ? AND status = 'reserved'"
)
_SETTLE_RETURNING = (
    SETTLE_ROW + " RETURNING grant_id, user_id, reserved_micro_usd, tokens_reserved, "
    "window_keys_json"
)
_MOVE = (
    "UPDATE counters SET spent = spent + ?, reserved = reserved + ? "
    "WHERE scope = ? AND key = ? RETURNING spent, reserved"
)
WALLET_TX = (
    "INSERT INTO wallet_transactions (id, user_id, kind, amount_micro_usd, "
    "balance_after_micro_usd, ledger_id, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def ledger_row(req: ReserveRequest, keys_json: str) -> list[object]:
    """The reservation's ledger row in ``COLUMNS`` order (settlement fields empty)."""
    return [
        req.entry_id,
        req.grant_id,
        req.user_id,
        req.client_id,
        req.provider_id,
        req.model,
        req.endpoint,
        int(req.streamed),
        "reserved",
        req.amount_micro_usd,
        keys_json,
        0,
        req.now,
        req.tokens_reserved,
        int(WALLET_KEY in keys_of(keys_json)),
        req.downgraded_from,
        req.instance_id,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ]


@functools.lru_cache(maxsize=1024)
def keys_of(keys_json: str) -> tuple[str, ...]:
    """A ledger row's counter keys (memoised: a grant's keys change once a bucket)."""
    return tuple(json.loads(keys_json))


@functools.lru_cache(maxsize=1024)
def keys_json(keys: tuple[str, ...]) -> str:
    return json.dumps(list(keys))


def settled_fields(s: Settlement, now: float) -> tuple[object, ...]:
    """The settlement's values in ``SETTLE_ROW`` order (without the entry id)."""
    return (
        s.status,
        s.cost_micro_usd,
        s.usage_source,
        s.input_tokens,
        s.output_tokens,
        s.cached_input_tokens,
        s.reasoning_tokens,
        int(s.needs_reconciliation),
        s.upstream_status,
        s.error,
        now,
    )


def settlement_of(fields: Sequence[object]) -> Settlement:
    """``settled_fields`` read back (the journal's settlement records)."""
    return Settlement(
        status=fields[0],  # type: ignore[arg-type]
        cost_micro_usd=int(fields[1]),  # type: ignore[call-overload]
        usage_source=fields[2],  # type: ignore[arg-type]
        input_tokens=fields[3],  # type: ignore[arg-type]
        output_tokens=fields[4],  # type: ignore[arg-type]
        cached_input_tokens=fields[5],  # type: ignore[arg-type]
        reasoning_tokens=fields[6],  # type: ignore[arg-type]
        needs_reconciliation=bool(fields[7]),
        upstream_status=fields[8],  # type: ignore[arg-type]
        error=fields[9],  # type: ignore[arg-type]
    )


# -- the transactions ------------------------------------------------------------------


def check_alive(conn: sqlite3.Connection, req: ReserveRequest) -> tuple[float, float]:
    """(the token's expiry, the grant's updated_at); raises ``CredentialRevoked`` unless
    token and grant are live, ``GrantChanged`` when the grant moved past ``req.basis``."""
    row = conn.execute(ALIVE, (req.token_hash, req.now, req.grant_id)).fetchone()
    if row is None:
        raise CredentialRevoked
    if req.basis is not None and row[1] != req.basis:
        raise GrantChanged
    return float(row[0]), row[1]


def seed_counter(
    conn: sqlite3.Connection, counter: Counter, basis: float | None
) -> tuple[int, int]:
    """Compute ``counter`` from the ledger in the caller's transaction (``rules.seed_sql``):
    spent = what the calls of its period were charged, reserved = what its calls still in
    flight hold; each of those learns to settle into it too. Returns (spent, reserved)."""
    sql, args = rules.seed_sql(counter)
    spent, reserved = conn.execute(sql, args).fetchone()
    where, args = rules.period_where(counter)
    open_rows = conn.execute(
        f"SELECT id, window_keys_json FROM ledger WHERE {where} AND status = 'reserved'",  # noqa: S608 (constants)
        args,
    ).fetchall()
    for entry_id, keys in open_rows:
        more = rules.tagged(keys_of(keys), counter.key)
        if more is not None:
            conn.execute(
                "UPDATE ledger SET window_keys_json = ? WHERE id = ?", (keys_json(more), entry_id)
            )
    conn.execute(
        SET_COUNTER,
        (counter.scope, counter.key, int(spent), int(reserved), basis, counter.expires_at),
    )
    return int(spent), int(reserved)


def refill_tx(conn: sqlite3.Connection, refill: Refill, now: float) -> bool:
    """Top the wallet up *to* its monthly refill once per period; True when it did."""
    row = conn.execute(
        "UPDATE wallets SET refilled_for = ? WHERE user_id = ? "
        "AND monthly_refill_micro_usd IS NOT NULL "
        "AND (refilled_for IS NULL OR refilled_for != ?) RETURNING monthly_refill_micro_usd",
        (refill.period_key, refill.user_id, refill.period_key),
    ).fetchone()
    if row is None:
        return False
    scope = wallet_scope(refill.user_id)
    found = conn.execute(COUNTER, (scope, WALLET_KEY)).fetchone()
    old_balance = -int(found[0]) if found else 0
    new_balance = max(old_balance, int(row[0]))
    conn.execute(ADD, (scope, WALLET_KEY, old_balance - new_balance, 0, None, None))
    conn.execute(
        WALLET_TX,
        (
            new_id(),
            refill.user_id,
            "refill",
            new_balance - old_balance,
            new_balance,
            None,
            f"monthly refill {refill.period_key}",
            now,
        ),
    )
    return True


def refill_due(conn: sqlite3.Connection, refill: Refill) -> bool:
    row = conn.execute(
        "SELECT monthly_refill_micro_usd, refilled_for FROM wallets WHERE user_id = ?",
        (refill.user_id,),
    ).fetchone()
    return row is not None and row[0] is not None and row[1] != refill.period_key


def reserve_tx(conn: sqlite3.Connection, req: ReserveRequest) -> Reserved | Refused:
    """Every limit checked and held, all or nothing, in the caller's transaction."""
    check_alive(conn, req)
    # kept even when the call is refused (like counters computed on the way)
    seeded = req.refill is not None and refill_tx(conn, req.refill, req.now)

    def read(c: Counter) -> tuple[int, int] | None:
        row = conn.execute(COUNTER, (c.scope, c.key)).fetchone()
        if row is None:
            return (0, 0) if rules.zero_when_missing(c, req.basis) else None
        if rules.usable_as_stored(c, row[2], req.basis):
            return int(row[0]), int(row[1])
        return None

    while True:
        decided = rules.decide(req, read)
        if not isinstance(decided, rules.NeedsSeed):
            break
        for c in decided.counters:
            seed_counter(conn, c, req.basis)
        seeded = True
    if isinstance(decided, Refused):
        if not seeded:
            raise Rollback(decided)
        return decided  # the counters computed on the way are kept
    for c, amount, _i in decided.holds:
        conn.execute(ADD, (c.scope, c.key, 0, amount, req.basis, c.expires_at))
    keys = keys_json(tuple(c.key for c, _a, _i in decided.holds))
    conn.execute(INSERT_ROW, ledger_row(req, keys))
    return Reserved(req.entry_id, decided.states)


def settle_tx(
    conn: sqlite3.Connection, entry_id: str, s: Settlement, now: float
) -> tuple[CounterState, ...]:
    """Settle one call in the caller's transaction (idempotent: a settled row is left
    alone): the row leaves ``reserved`` and its counters move (``rules.settle_moves``)."""
    row = conn.execute(_SETTLE_RETURNING, (*settled_fields(s, now), entry_id)).fetchone()
    if row is None:
        return ()
    grant_id, user_id, reserved, tokens, keys = row
    states = []
    moves = rules.settle_moves(keys_of(keys), grant_id, user_id, int(reserved), tokens, s)
    for scope, key, d_spent, d_reserved in moves:
        got = conn.execute(_MOVE, (d_spent, d_reserved, scope, key)).fetchone()
        if got is None:
            continue  # a bucket deleted once it expired
        states.append(CounterState(scope, key, int(got[0]), int(got[1])))
        if key == WALLET_KEY and s.cost_micro_usd:
            conn.execute(
                WALLET_TX,
                (new_id(), user_id, "charge", -s.cost_micro_usd, -int(got[0]), entry_id, None, now),
            )
    return tuple(states)


def open_entries(
    conn: sqlite3.Connection, started_before: float | None, instance_ids: Sequence[str] = ()
) -> list[tuple[str, int]]:
    """Open reservations made before ``started_before`` or by the named instances."""
    conds: list[str] = []
    args: list[object] = []
    if started_before is not None:
        conds.append("created_at < ?")
        args.append(started_before)
    if instance_ids:
        conds.append(f"instance_id IN ({', '.join('?' * len(instance_ids))})")
        args.extend(instance_ids)
    if not conds:
        return []
    rows = conn.execute(
        "SELECT id, reserved_micro_usd FROM ledger WHERE status = 'reserved' AND ("  # noqa: S608 (constants)
        + " OR ".join(conds)
        + ")",
        args,
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def dead_settlement(reserved_micro_usd: int) -> Settlement:
    """How a call whose process died is settled: charged its reservation in full and
    flagged ``needs_reconciliation`` (never dropped, never charged twice)."""
    return Settlement(
        status="charged_reservation",
        cost_micro_usd=reserved_micro_usd,
        usage_source="reservation",
        needs_reconciliation=True,
        error="gateway stopped before the call settled",
    )


def reconcile_tx(
    conn: sqlite3.Connection, started_before: float | None, instance_ids: Sequence[str] = ()
) -> int:
    rows = open_entries(conn, started_before, instance_ids)
    now = time.time()
    for entry_id, reserved in rows:
        settle_tx(conn, entry_id, dead_settlement(reserved), now)
    return len(rows)


def collect_expired(conn: sqlite3.Connection, now: float) -> int:
    """Delete time buckets that have left every window (nothing held on them)."""
    return conn.execute(
        "DELETE FROM counters WHERE expires_at < ? AND reserved = 0", (now,)
    ).rowcount


class SqliteMetering:
    """The transactional backend: each call is one ``sqlite3`` write transaction on the
    hot path's inline connection (or its helper thread when another process holds the
    write lock)."""

    def __init__(self, hot: SqliteHotPath) -> None:
        self.hot = hot

    async def reserve(self, req: ReserveRequest) -> Reserved | Refused:
        return await self.hot.run(functools.partial(reserve_tx, req=req), metering=True)

    def settle_now(
        self, entry_id: str, s: Settlement, now: float
    ) -> tuple[CounterState, ...] | None:
        done = self.hot.try_now(
            functools.partial(settle_tx, entry_id=entry_id, s=s, now=now), metering=True
        )
        return None if isinstance(done, Busy) else done

    async def settle(
        self, entry_id: str, s: Settlement, now: float | None = None
    ) -> tuple[CounterState, ...]:
        now = time.time() if now is None else now
        return await self.hot.run(
            functools.partial(settle_tx, entry_id=entry_id, s=s, now=now), metering=True
        )

    async def reconcile_dead(
        self, *, started_before: float | None = None, instance_ids: Sequence[str] = ()
    ) -> int:
        """Charge the reservations of dead processes (``dead_settlement``): those opened
        before ``started_before`` (a personal server's start: it owned the database, so
        every earlier one is dead) or by the named instances."""
        return await self.hot.run(
            functools.partial(
                reconcile_tx, started_before=started_before, instance_ids=tuple(instance_ids)
            )
        )

    async def collect(self, now: float) -> int:
        return await self.hot.run(functools.partial(collect_expired, now=now), metering=True)

    async def close(self) -> None:
        return None
