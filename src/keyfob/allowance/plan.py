"""From a grant's policy to the counters one call must fit (pure, memoised).

Every limit becomes a ``metering.Limit``: a cap over one or more counters.

- a calendar window (day, week, month in the person's zone; optionally one model's) is
  one counter keyed by its period (``month:2026-12``, ``model:M:month:2026-12``);
- a rolling window of N seconds is ``ROLLING_BUCKETS`` + 1 time buckets of N / buckets
  seconds (``roll:N:INDEX``); a call holds the current bucket and must fit the sum of
  every bucket that overlaps the last N seconds. The oldest bucket is only partly inside
  the window and is counted whole, so a rolling limit may refuse a little early (by at
  most one bucket's worth of time) but never lets spend past its cap;
- requests and tokens per minute are the same over 60 seconds (``rpm:INDEX``,
  ``tpm:INDEX``), counting calls and tokens instead of micro-USD;
- the wallet is one counter per person (``wallet``), holding minus the balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keyfob.allowance.policy import Policy, PolicyError, SpendLimit
from keyfob.allowance.windows import Window, window_for
from keyfob.metering.rules import CALLS_PREFIX, TOKENS_PREFIX
from keyfob.metering.types import WALLET_KEY, Counter, Limit, Refill, wallet_scope
from keyfob.store.records import Grant

#: Buckets per rolling window or rate (the early-refusal margin is one bucket).
ROLLING_BUCKETS = 20
RATE_SPAN_S = 60

#: Parsed policies by what they are parsed from; a grant edit changes the key, so an
#: entry never goes stale. Bounded: cleared when full (one parse per grant refills it).
_POLICIES: dict[tuple[str | None, str, int], Policy] = {}
_CACHE_MAX = 4096


def policy_of(grant: Grant) -> Policy:
    """The grant's policy, parsed once per distinct stored policy.

    Why a cache: parsing the JSON and building the frozen dataclasses cost more than the
    whole reservation on the hot path, and the inputs (``policy_json``, ``window``,
    ``cap_micro_usd``) are the complete key: ``Policy`` is immutable."""
    key = (grant.policy_json, grant.window, grant.cap_micro_usd)
    found = _POLICIES.get(key)
    if found is None:
        found = _parse_policy(grant)
        if len(_POLICIES) >= _CACHE_MAX:
            _POLICIES.clear()
        _POLICIES[key] = found
    return found


def _parse_policy(grant: Grant) -> Policy:
    if grant.policy_json:
        try:
            return Policy.from_json(grant.policy_json)
        except PolicyError:
            pass  # a stored policy that no longer parses falls back to the plain cap
    if grant.window in ("day", "week", "month"):
        return Policy(limits=(SpendLimit(grant.window, grant.cap_micro_usd),))
    return Policy.monthly(grant.cap_micro_usd)


#: The current calendar window per (period, time zone), valid until it resets.
_WINDOWS: dict[tuple[str, str], Window] = {}


def current_window(period: str, now: float, tz_name: str) -> Window:
    """``window_for`` memoised while ``now`` stays inside the cached window.

    Why: zoneinfo conversions and ``strftime`` cost ~20-40 us per call, and the answer
    only changes when the window resets. A window is a pure function of (period, zone,
    instant), and any instant in [starts_at, resets_at) gives the same window, so the
    cached one is exact (DST included: the bounds are instants)."""
    key = (period, tz_name)
    w = _WINDOWS.get(key)
    if w is None or not (w.starts_at <= now < w.resets_at):
        w = window_for(period, now, tz_name)
        if len(_WINDOWS) >= _CACHE_MAX:
            _WINDOWS.clear()
        _WINDOWS[key] = w
    return w


def bucket_width(span_s: int) -> int:
    return max(1, math.ceil(span_s / ROLLING_BUCKETS))


def buckets(
    scope: str, prefix: str, span_s: int, now: float, model: str | None
) -> tuple[Counter, ...]:
    """The time buckets overlapping the last ``span_s`` seconds, oldest first."""
    width = bucket_width(span_s)
    first, last = math.floor((now - span_s) / width), math.floor(now / width)
    return tuple(
        Counter(
            scope,
            f"{prefix}{i}",
            starts_at=float(i * width),
            ends_at=float((i + 1) * width),
            model=model,
            expires_at=float((i + 1) * width + span_s),
        )
        for i in range(first, last + 1)
    )


@dataclass(frozen=True)
class Plan:
    """What a policy asks of one call to one model, valid in [valid_from, valid_until)."""

    limits: tuple[Limit, ...]
    #: The calendar window of each window limit's key (for refusals and headers).
    by_key: dict[str, Window]
    month: Window
    refill: Refill | None
    valid_from: float
    valid_until: float


#: Plans by (grant, what its policy is parsed from, model, zone): rebuilt when the first
#: of their counters' periods ends; a grant edit changes the key.
_PLANS: dict[tuple[str, str | None, str, int, str, str], Plan] = {}


def plan_for(grant: Grant, policy: Policy, model: str, now: float) -> Plan:
    """The limits one call must fit, memoised while every counter's period holds.

    Why: building the limit lists costs ~10-30 us per call and changes only when a
    window or bucket moves on or the policy changes (a new stored policy, a new key).
    The plan is never mutated by its users."""
    tz_name = grant.timezone
    key = (grant.id, grant.policy_json, grant.window, grant.cap_micro_usd, model, tz_name)
    found = _PLANS.get(key)
    if found is not None and found.valid_from <= now < found.valid_until:
        return found
    found = _build(grant, policy, model, now)
    if len(_PLANS) >= _CACHE_MAX:
        _PLANS.clear()
    _PLANS[key] = found
    return found


def _build(grant: Grant, policy: Policy, model: str, now: float) -> Plan:
    rolling: list[Limit] = []
    windows: list[Limit] = []
    by_key: dict[str, Window] = {}
    starts, ends = [], []
    for lim in policy.limits:
        if lim.model is not None and lim.model != model:
            continue
        if lim.period == "rolling":
            assert lim.seconds is not None
            prefix = (
                f"roll:{lim.seconds}:" if lim.model is None else f"roll:{lim.seconds}:{lim.model}:"
            )
            run = buckets(grant.id, prefix, lim.seconds, now, lim.model)
            rolling.append(
                Limit(
                    f"rolling:{lim.seconds}",
                    lim.label,
                    lim.cap_micro_usd,
                    run,
                    "rolling",
                    span_s=lim.seconds,
                    bucket_s=bucket_width(lim.seconds),
                )
            )
            starts.append(run[-1].starts_at or now)
            ends.append(run[-1].ends_at or now)
            continue
        w = current_window(lim.period, now, tz_name=grant.timezone)
        wkey = w.key if lim.model is None else f"model:{lim.model}:{w.key}"
        by_key[wkey] = w
        counter = Counter(
            grant.id, wkey, starts_at=w.starts_at, ends_at=w.resets_at, model=lim.model
        )
        windows.append(Limit(wkey, lim.label, lim.cap_micro_usd, (counter,), "window", w.resets_at))
        starts.append(w.starts_at)
        ends.append(w.resets_at)
    rates: list[Limit] = []
    for cap, prefix, key, label in (
        (policy.requests_per_minute, CALLS_PREFIX, "requests_per_minute", "requests per minute"),
        (policy.tokens_per_minute, TOKENS_PREFIX, "tokens_per_minute", "tokens per minute"),
    ):
        if cap is None:
            continue
        run = buckets(grant.id, prefix, RATE_SPAN_S, now, None)
        rates.append(
            Limit(
                key, label, cap, run, "rate", span_s=RATE_SPAN_S, bucket_s=bucket_width(RATE_SPAN_S)
            )
        )
        starts.append(run[-1].starts_at or now)
        ends.append(run[-1].ends_at or now)
    month = current_window("month", now, grant.timezone)
    refill = None
    wallet: list[Limit] = []
    if policy.use_wallet:
        counter = Counter(wallet_scope(grant.user_id), WALLET_KEY)
        wallet.append(Limit(WALLET_KEY, "wallet", 0, (counter,), "wallet"))
        refill = Refill(grant.user_id, month.key)
    starts.append(month.starts_at)
    ends.append(month.resets_at)
    return Plan(
        (*rolling, *rates, *windows, *wallet), by_key, month, refill, max(starts), min(ends)
    )
