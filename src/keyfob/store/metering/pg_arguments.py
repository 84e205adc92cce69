"""The arguments of the PostgreSQL reservation functions (``postgres.sql``) for one call.

Why a module of its own: building them is pure (no connection, no state beyond a memo of
each plan's arrays), and both the backend (``postgres.py``) and its batches
(``pg_batch.py``) send them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyfob.metering import rules
from keyfob.metering.types import Counter, Limit, Measure, ReserveRequest


@dataclass(frozen=True, slots=True)
class _Shape:
    """The arrays ``keyfob_reserve`` takes for one plan's limits (all but the holds)."""

    scopes: list[str]
    keys: list[str]
    starts: list[float | None]
    expires: list[float | None]
    limit_of: list[int]
    caps: list[int]
    single: list[bool]
    measures: list[Measure]


#: id(limits) -> (the limits, their shape); the entry keeps the tuple alive, so its id is
#: not reused meanwhile. Keyed by identity: hashing the nested limits costs more than
#: building the arrays.
_SHAPES: dict[int, tuple[tuple[Limit, ...], _Shape]] = {}


def shape_of(limits: tuple[Limit, ...]) -> _Shape:
    """Memoised per plan: the allowance service hands over the same limits for every call
    of a grant and model until a period or bucket moves on (``allowance/plan.py``)."""
    found = _SHAPES.get(id(limits))
    if found is not None and found[0] is limits:
        return found[1]
    shape = _Shape([], [], [], [], [], [], [], [])
    for j, lim in enumerate(limits, start=1):
        for c in lim.counters:
            shape.scopes.append(c.scope)
            shape.keys.append(c.key)
            shape.starts.append(c.starts_at)
            shape.expires.append(c.expires_at)
            shape.limit_of.append(j)
        shape.caps.append(lim.cap)
        shape.single.append(len(lim.counters) == 1)
        shape.measures.append(rules.measure_of(lim.counters[-1].key))
    if len(_SHAPES) >= 4096:
        _SHAPES.clear()
    _SHAPES[id(limits)] = (limits, shape)
    return shape


def one_arguments(req: ReserveRequest, c: Counter) -> list[Any]:
    """``keyfob_reserve_one``'s arguments (and ``keyfob_restore_one``'s): a call under
    one limit of one money counter ``c``."""
    [lim] = req.limits
    return [
        req.entry_id,
        req.token_hash,
        req.grant_id,
        req.user_id,
        req.client_id,
        req.provider_id,
        req.model,
        req.endpoint,
        req.streamed,
        req.amount_micro_usd,
        req.tokens_reserved,
        req.now,
        req.basis,
        req.downgraded_from,
        req.instance_id,
        c.scope,
        c.key,
        c.starts_at,
        c.expires_at,
        lim.cap,
        rules.hold_of("usd", req.amount_micro_usd, req.tokens_reserved),
    ]


def arguments(req: ReserveRequest) -> list[Any]:
    """``keyfob_reserve``'s (and ``keyfob_reserve_durably``'s) arguments."""
    shape = shape_of(req.limits)
    needs = [rules.hold_of(m, req.amount_micro_usd, req.tokens_reserved) for m in shape.measures]
    return [
        req.entry_id,
        req.token_hash,
        req.grant_id,
        req.user_id,
        req.client_id,
        req.provider_id,
        req.model,
        req.endpoint,
        req.streamed,
        req.amount_micro_usd,
        req.tokens_reserved,
        req.now,
        req.basis,
        req.downgraded_from,
        req.instance_id,
        shape.scopes,
        shape.keys,
        shape.starts,
        shape.expires,
        shape.limit_of,
        shape.caps,
        needs,
        shape.single,
        req.refill.period_key if req.refill is not None else None,
    ]
