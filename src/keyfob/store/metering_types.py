"""The value types of the reserve/settle protocol, shared by both implementations
(``metering.MeteringRepo`` on SQLAlchemy, ``sqlite_hot`` on plain sqlite3)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from keyfob.store.records import WindowState


@dataclass(frozen=True)
class WindowLimit:
    """A counter window (calendar day/week/month, optionally for one model).

    ``starts_at`` and ``model`` say which ledger rows belong to the window's period: a
    counter that is new, or was computed for an older version of the grant, is computed
    again from them (settled costs + open reservations) before it holds anything
    (``None``: a bare counter that starts at zero, for callers that know no period)."""

    window_key: str
    cap_micro_usd: int
    label: str = ""
    resets_at: float | None = None
    starts_at: float | None = None
    model: str | None = None


@dataclass(frozen=True)
class RollingLimit:
    """Spend over the last ``seconds``, summed from the ledger (``model``: one model only).

    A call counts at its reservation time: in flight at its reservation, then at its cost."""

    seconds: int
    cap_micro_usd: int
    model: str | None = None
    label: str = ""


@dataclass(frozen=True)
class RateLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
@dataclass(slots=True)
class Reserved:
    entry_id: str
    windows: tuple[WindowState, ...]


@dataclass(frozen=True)
class Refused:
    """The reservation did not fit: the limit that refused, its state, and the earliest
    moment it could fit again (None when only a refill or a person can change it)."""

    window: WindowState
    label: str = ""
    retry_at: float | None = None


class CredentialRevoked(Exception):
    """The token or its grant ended before this call could reserve."""


class GrantChanged(Exception):
    """The grant was edited after the caller read it (its ``updated_at`` moved): the
    caller reads it again and plans the call under the policy now in force."""


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
@dataclass(slots=True)
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


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
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
    windows: list[WindowLimit] = field(default_factory=list)
    rolling: list[RollingLimit] = field(default_factory=list)
    rates: RateLimits | None = None
    tokens_reserved: int | None = None
    wallet_user_id: str | None = None
    wallet_refill_key: str | None = None
    downgraded_from: str | None = None
    #: The ``updated_at`` of the grant the caller planned with: checked with the token
    #: (``GrantChanged`` when it moved) and the version window counters are computed for
    #: (None: neither, for callers that plan no grant).
    basis: float | None = None
    #: Filled by the transactional path: the windows it computed from the ledger, so
    #: the serving process's open reservations can be told to settle into them too.
    seeded: list[WindowLimit] | None = None


@functools.lru_cache(maxsize=1024)
def keys_json(keys: tuple[str, ...]) -> str:
    """A ledger row's ``window_keys_json``; memoised (a grant's keys change once a window)."""
    return json.dumps(list(keys))
