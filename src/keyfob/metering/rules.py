"""The reserve/settle rules, written once for every backend (pure: no storage, no clock).

A backend stores counters ``(scope, key) -> (spent, reserved)`` and applies what these
functions decide: which counters a call holds and by how much, whether every limit fits,
when a refused limit could fit again, how a settlement moves each counter, and whether a
stored counter may be used as it is or must first be computed from the ledger.
PostgreSQL applies the same decisions inside one SQL function per call
(``store/metering/postgres.sql``); the shared backend tests hold every backend to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keyfob.metering.types import (
    WALLET_KEY,
    Counter,
    Limit,
    Measure,
    Refused,
    ReserveRequest,
    Settlement,
    WindowState,
    wallet_scope,
)

#: Key prefixes of counters that do not count micro-USD.
CALLS_PREFIX = "rpm:"
TOKENS_PREFIX = "tpm:"


def measure_of(key: str) -> Measure:
    """What a counter counts, from its key (the one place that says so; postgres.sql's
    ``keyfob_measure`` is its SQL twin)."""
    if key.startswith(CALLS_PREFIX):
        return "calls"
    if key.startswith(TOKENS_PREFIX):
        return "tokens"
    return "usd"


def scope_of(key: str, grant_id: str, user_id: str) -> str:
    """The scope of a key listed on a ledger row: the person's wallet, else the grant."""
    return wallet_scope(user_id) if key == WALLET_KEY else grant_id


def hold_of(measure: Measure, amount_micro_usd: int, tokens: int | None) -> int:
    """What a call holds on a counter of ``measure`` while it is in flight."""
    if measure == "usd":
        return amount_micro_usd
    if measure == "calls":
        return 1
    return tokens or 0


def actual_of(measure: Measure, s: Settlement) -> int:
    """What a settled call adds to a counter of ``measure``."""
    if measure == "usd":
        return s.cost_micro_usd
    if measure == "calls":
        return 1
    return (s.input_tokens or 0) + (s.output_tokens or 0)


def settle_moves(
    keys: Sequence[str],
    grant_id: str,
    user_id: str,
    reserved_micro_usd: int,
    tokens_reserved: int | None,
    s: Settlement,
) -> list[tuple[str, str, int, int]]:
    """(scope, key, spent delta, reserved delta) for each counter a ledger row holds,
    in (scope, key) order (the order every backend takes row locks in)."""
    moves = []
    for key in keys:
        m = measure_of(key)
        held = hold_of(m, reserved_micro_usd, tokens_reserved)
        moves.append((scope_of(key, grant_id, user_id), key, actual_of(m, s), -held))
    moves.sort()
    return moves


# -- whether a stored counter can be used ---------------------------------------------


def usable_as_stored(counter: Counter, seeded_for: float | None, basis: float | None) -> bool:
    """A stored counter is current when it was computed for the grant version the call
    was planned with, or when the ledger cannot rebuild it anyway (no period: the
    wallet, bare counters) or the caller plans no grant."""
    return basis is None or counter.starts_at is None or seeded_for == basis


def zero_when_missing(counter: Counter, basis: float | None) -> bool:
    """A missing counter is exactly zero when its period began after the grant version
    the call was planned with: every call of the grant since then, under this very
    policy, held this counter and would have created it. Otherwise it is computed from
    the ledger first (a window added, switched or resized mid-period)."""
    return basis is None or counter.starts_at is None or counter.starts_at >= basis


# -- deciding a reservation ------------------------------------------------------------


@dataclass(slots=True)
class NeedsSeed:
    """These counters must be computed from the ledger before the call can be decided."""

    counters: list[Counter]


@dataclass(slots=True)
class Holds:
    """The call fits: add ``amount`` to the reserved side of each (counter, amount),
    and the limits' states after the hold."""

    holds: list[tuple[Counter, int, int]]  # (counter, amount, the limit's index)
    states: tuple[WindowState, ...]


#: (spent, reserved) of a counter, or None when it must be computed from the ledger.
Reader = Callable[[Counter], "tuple[int, int] | None"]


def decide(req: ReserveRequest, read: Reader) -> Holds | Refused | NeedsSeed:
    """Check every limit of ``req`` against the counters as ``read`` sees them.

    All or nothing: either every limit fits and the holds are returned, or the first
    limit that does not fit is named with its state and when it could fit again."""
    values: list[list[tuple[int, int]]] = []
    stale: list[Counter] = []
    for lim in req.limits:
        row = []
        for c in lim.counters:
            got = read(c)
            if got is None:
                stale.append(c)
                got = (0, 0)
            row.append(got)
        values.append(row)
    if stale:
        return NeedsSeed(stale)
    holds: list[tuple[Counter, int, int]] = []
    states = []
    amount, tokens = req.amount_micro_usd, req.tokens_reserved
    for i, lim in enumerate(req.limits):
        row = values[i]
        spent = sum(v[0] for v in row)
        reserved = sum(v[1] for v in row)
        need = hold_of(measure_of(lim.counters[-1].key), amount, tokens)
        if spent + reserved + need > lim.cap:
            return refusal(lim, row, need, req.now)
        holds.append((lim.counters[-1], need, i))
        states.append(state_of(lim, spent, reserved + need))
    return Holds(holds, tuple(states))


def state_of(lim: Limit, spent: int, reserved: int) -> WindowState:
    """A limit's state for pages and headers. The wallet's counter holds minus its
    balance as "spent" against a cap of zero; shown as its balance and holds."""
    if lim.kind == "wallet":
        return WindowState(lim.key, lim.cap - spent, 0, reserved)
    return WindowState(lim.key, lim.cap, spent, reserved)


def refusal(lim: Limit, values: Sequence[tuple[int, int]], need: int, now: float) -> Refused:
    """The refusal of ``lim``: its state and the earliest moment it could fit again."""
    spent = sum(v[0] for v in values)
    reserved = sum(v[1] for v in values)
    return Refused(
        state_of(lim, spent, reserved), lim.label or lim.key, retry_at(lim, values, need)
    )


def retry_at(lim: Limit, values: Sequence[tuple[int, int]], need: int) -> float | None:
    """When ``need`` more could fit in ``lim`` by time alone (None: never by time).

    A calendar window frees at its reset. A run of buckets frees one bucket at a time as
    each falls out of the span, oldest first: the answer is when enough of them have."""
    if lim.kind == "window":
        return lim.resets_at  # when it resets (even if this call is larger than its cap)
    if lim.kind == "wallet" or need > lim.cap:
        return None
    left = sum(v[0] + v[1] for v in values)
    for c, (spent, reserved) in zip(lim.counters, values, strict=True):
        left -= spent + reserved
        if left + need <= lim.cap:
            assert c.starts_at is not None
            return c.starts_at + lim.bucket_s + lim.span_s
    return None


# -- computing a counter from the ledger -----------------------------------------------


def seed_sql(counter: Counter) -> tuple[str, list[object]]:
    """The ledger rows a counter sums, as one SQL query with ``?`` placeholders that
    SQLite and PostgreSQL both run: (settled actuals, open holds).

    The rows are the grant's calls reserved in the counter's period (of one model for a
    per-model counter): a call counts in the period it was reserved in."""
    assert counter.starts_at is not None
    m = measure_of(counter.key)
    actual = {
        "usd": "COALESCE(cost_micro_usd, 0)",
        "calls": "1",
        "tokens": "COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)",
    }[m]
    held = {"usd": "reserved_micro_usd", "calls": "1", "tokens": "COALESCE(tokens_reserved, 0)"}[m]
    where, args = period_where(counter)
    sql = (
        f"SELECT COALESCE(SUM(CASE WHEN status <> 'reserved' THEN {actual} ELSE 0 END), 0), "  # noqa: S608 (constants)
        f"COALESCE(SUM(CASE WHEN status = 'reserved' THEN {held} ELSE 0 END), 0) "
        f"FROM ledger WHERE {where}"
    )
    return sql, args


def period_where(counter: Counter) -> tuple[str, list[object]]:
    """``WHERE`` clause and arguments selecting the ledger rows of a counter's period."""
    where = "grant_id = ? AND created_at >= ?"
    args: list[object] = [counter.scope, counter.starts_at]
    if counter.ends_at is not None:
        where += " AND created_at < ?"
        args.append(counter.ends_at)
    if counter.model is not None:
        where += " AND model = ?"
        args.append(counter.model)
    return where, args


def tagged(keys: Sequence[str], key: str) -> tuple[str, ...] | None:
    """An open row's keys with ``key`` added, or None when it already settles into it:
    a counter computed from the ledger counts the calls in flight in its period, so
    their settlement must move it too."""
    if key in keys:
        return None
    return (*keys, key)
