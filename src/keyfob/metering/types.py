"""The values of the reserve/settle protocol, shared by the plan and every backend.

Every limit of an allowance is a set of *counters* with a *cap* (docs/ARCHITECTURE.md,
"Metering: counters with caps"): a calendar window is one counter, a rolling window or a
rate is a run of time buckets summed together, the wallet is one counter per person.
Backends only ever apply these values; they know nothing about policies or windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What a counter counts: micro-USD, calls, or tokens (input + output).
Measure = Literal["usd", "calls", "tokens"]
#: How a limit is made: one calendar counter, time buckets, or the person's wallet.
LimitKind = Literal["window", "rolling", "rate", "wallet"]
#: What a settled ledger row says about its call.
SettledStatus = Literal["settled", "estimated", "charged_reservation", "failed"]
#: Where a settled call's usage came from.
UsageSource = Literal["upstream", "estimated", "reservation", "none"]

#: The wallet's counter key; its scope is ``wallet_scope(user_id)``.
WALLET_KEY = "wallet"


def wallet_scope(user_id: str) -> str:
    return "wallet:" + user_id


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build). Treat it as immutable.
@dataclass(slots=True)
class WindowState:
    """A limit as seen at one moment: what it allows, what is spent and what is held."""

    window_key: str
    cap_micro_usd: int
    spent_micro_usd: int
    reserved_micro_usd: int

    @property
    def left_micro_usd(self) -> int:
        return max(0, self.cap_micro_usd - self.spent_micro_usd - self.reserved_micro_usd)


@dataclass(frozen=True, slots=True)
class Counter:
    """One stored counter: ``(scope, key)`` -> spent and reserved, in the units of its
    measure (``rules.measure_of(key)``: the key's prefix says it, so a ledger row's list
    of keys is all a settlement needs).

    ``starts_at``/``ends_at``/``model`` name the ledger rows the counter sums, so that a
    counter which is new or was computed for another version of the grant can be
    computed again from the ledger (``None``: a counter the ledger cannot rebuild, such
    as the wallet, or a bare counter of a caller that plans no grant)."""

    scope: str
    key: str
    starts_at: float | None = None
    ends_at: float | None = None
    model: str | None = None
    #: When the counter no longer matters (time buckets): it may be deleted after.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Limit:
    """A cap over the sum of ``counters``; a call's hold goes on the last (current) one.

    ``key`` names the limit in refusals, headers and webhooks (``month:2026-12``,
    ``rolling:18000``, ``requests_per_minute``, ``wallet``)."""

    key: str
    label: str
    cap: int
    counters: tuple[Counter, ...]
    kind: LimitKind = "window"
    resets_at: float | None = None
    #: Rolling windows and rates: the span (seconds) and the width of one bucket.
    span_s: int = 0
    bucket_s: int = 0


@dataclass(frozen=True, slots=True)
class Refill:
    """Top the person's wallet up *to* its monthly refill (set on the wallet) once per
    ``period_key`` (the calendar month in the person's zone)."""

    user_id: str
    period_key: str


#: Not frozen, for speed (built on every gateway call). Treat it as immutable.
@dataclass(slots=True)
class ReserveRequest:
    """One reservation: who, what, how much, and every limit it must fit."""

    entry_id: str
    token_hash: str
    grant_id: str
    user_id: str
    client_id: str
    provider_id: str | None
    model: str
    endpoint: str
    streamed: bool
    amount_micro_usd: int
    now: float
    limits: tuple[Limit, ...] = ()
    tokens_reserved: int | None = None
    refill: Refill | None = None
    downgraded_from: str | None = None
    #: The ``updated_at`` of the grant the caller planned with: checked with the token
    #: (``GrantChanged`` when it moved) and the version counters are computed for
    #: (None: neither, for callers that plan no grant).
    basis: float | None = None
    #: The serving process that holds the reservation (its dead reservations are
    #: released when it is found dead).
    instance_id: str | None = None


#: Not frozen, for speed. Treat it as immutable.
@dataclass(slots=True)
class Reserved:
    entry_id: str
    #: Each limit's state after the hold, in the request's order.
    windows: tuple[WindowState, ...]


@dataclass(frozen=True)
class Refused:
    """The reservation did not fit: the limit that refused, its state, and the earliest
    moment it could fit again (None when only a refill or a person can change it)."""

    window: WindowState
    label: str = ""
    retry_at: float | None = None


#: Not frozen, for speed. Treat it as immutable.
@dataclass(slots=True)
class Settlement:
    status: SettledStatus
    cost_micro_usd: int
    usage_source: UsageSource
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    needs_reconciliation: bool = False
    upstream_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter after a settlement moved it."""

    scope: str
    key: str
    spent: int
    reserved: int


class CredentialRevoked(Exception):
    """The token or its grant ended before this call could reserve."""


class GrantChanged(Exception):
    """The grant was edited after the caller read it (its ``updated_at`` moved): the
    caller reads it again and plans the call under the policy now in force."""
