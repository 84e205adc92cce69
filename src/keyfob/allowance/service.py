"""Reserve the worst case before the upstream is called; settle the actual afterwards.

This is the only way money leaves an allowance. A call whose worst case does not fit
every limit of the grant's policy is refused before any byte goes upstream, so concurrent
calls can never overspend: the store's conditional updates decide who gets the last cent.
What happens on refusal is the person's choice (policy.on_exhausted): ``block`` raises at
once, ``wait`` holds the call until a limit frees enough (or its wait budget runs out),
``downgrade`` tells the gateway to serve the person's fallback model instead.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from keyfob.allowance.policy import Policy, PolicyError
from keyfob.allowance.webhooks import Notifier
from keyfob.allowance.windows import Window, calendar_month, window_for
from keyfob.store import Store, sqlite_hot
from keyfob.store.metering import (
    CredentialRevoked,
    GrantChanged,
    RateLimits,
    Refused,
    RollingLimit,
    Settlement,
    WindowLimit,
    rolling_used,
)
from keyfob.store.metering_types import Reserved, ReserveRequest
from keyfob.store.records import Grant, WindowState
from keyfob.store.sqlite_writeback import NOT_HERE, NotHere
from keyfob.tokens import new_sortable_id

__all__ = [
    "AllowanceExhausted",
    "AllowanceService",
    "CredentialRevoked",
    "LimitState",
    "Reservation",
    "policy_of",
]

#: How often a held call (policy ``wait``) tries again at most.
WAIT_POLL_S = 1.0
#: How many times a reservation reads an edited grant again before giving up (each
#: edit between two reads costs one; a person does not edit this fast).
GRANT_RELOADS = 5


#: Parsed policies by what they are parsed from; a grant edit changes the key, so an
#: entry never goes stale. Bounded: cleared when full (one parse per grant refills it).
_POLICIES: dict[tuple[str | None, str, int], Policy] = {}
_POLICIES_MAX = 4096


def policy_of(grant: Grant) -> Policy:
    """The grant's policy, parsed once per distinct stored policy.

    Why a cache: parsing the JSON and building the frozen dataclasses cost more than the
    whole reservation's SQL on the hot path, and the inputs (``policy_json``, ``window``,
    ``cap_micro_usd``) are the complete key: ``Policy`` is immutable."""
    key = (grant.policy_json, grant.window, grant.cap_micro_usd)
    found = _POLICIES.get(key)
    if found is None:
        found = _parse_policy(grant)
        if len(_POLICIES) >= _POLICIES_MAX:
            _POLICIES.clear()
        _POLICIES[key] = found
    return found


#: The current calendar window per (period, time zone), valid until it resets.
_WINDOWS: dict[tuple[str, str], Window] = {}


def current_window(period: str, now: float, tz_name: str) -> Window:
    """``window_for`` memoised while ``now`` stays inside the cached window.

    Why: zoneinfo conversions and ``strftime`` cost ~20-40 us per call, twice per
    reservation, and the answer only changes when the window resets. A window is a pure
    function of (period, zone, instant), and any instant in [starts_at, resets_at) gives
    the same window, so the cached one is exact (DST included: the bounds are instants)."""
    key = (period, tz_name)
    w = _WINDOWS.get(key)
    if w is None or not (w.starts_at <= now < w.resets_at):
        w = window_for(period, now, tz_name)
        if len(_WINDOWS) >= _POLICIES_MAX:
            _WINDOWS.clear()
        _WINDOWS[key] = w
    return w


def _parse_policy(grant: Grant) -> Policy:
    if grant.policy_json:
        try:
            return Policy.from_json(grant.policy_json)
        except PolicyError:
            pass  # a stored policy that no longer parses falls back to the plain cap
    if grant.window in ("day", "week", "month"):
        from keyfob.allowance.policy import SpendLimit

        return Policy(limits=(SpendLimit(grant.window, grant.cap_micro_usd),))
    return Policy.monthly(grant.cap_micro_usd)


@dataclass(frozen=True)
class _Plan:
    """What a policy asks of one call to one model, valid until ``valid_until``."""

    windows: list[WindowLimit]
    rolling: list[RollingLimit]
    rates: RateLimits | None
    by_key: dict[str, Window]
    month: Window
    valid_from: float
    valid_until: float


#: Plans by (what the policy is parsed from, model, zone): rebuilt when the first of
#: their windows resets; a grant edit changes the key.
_PLANS: dict[tuple[str | None, str, int, str, str], _Plan] = {}


def _plan(grant: Grant, policy: Policy, model: str, now: float) -> _Plan:
    """The limits one call must fit, memoised while every calendar window holds.

    Why: building the limit lists (one window lookup per limit, the dataclasses) cost
    ~10 us per call and changes only when a window resets or the policy changes (a new
    stored policy, so a new key). The lists are never mutated by the callers."""
    tz_name = grant.timezone
    key = (grant.policy_json, grant.window, grant.cap_micro_usd, model, tz_name)
    found = _PLANS.get(key)
    if found is not None and found.valid_from <= now < found.valid_until:
        return found
    windows: list[WindowLimit] = []
    rolling: list[RollingLimit] = []
    by_key: dict[str, Window] = {}
    for lim in policy.limits:
        if lim.model is not None and lim.model != model:
            continue
        if lim.period == "rolling":
            assert lim.seconds is not None
            rolling.append(RollingLimit(lim.seconds, lim.cap_micro_usd, lim.model, lim.label))
            continue
        w = current_window(lim.period, now, tz_name)
        wkey = w.key if lim.model is None else f"model:{lim.model}:{w.key}"
        by_key[wkey] = w
        windows.append(
            WindowLimit(wkey, lim.cap_micro_usd, lim.label, w.resets_at, w.starts_at, lim.model)
        )
    rates = None
    if policy.requests_per_minute is not None or policy.tokens_per_minute is not None:
        rates = RateLimits(policy.requests_per_minute, policy.tokens_per_minute)
    month = current_window("month", now, tz_name)
    valid_from = max([month.starts_at, *(w.starts_at for w in by_key.values())])
    valid_until = min([month.resets_at, *(w.resets_at for w in by_key.values())])
    found = _Plan(windows, rolling, rates, by_key, month, valid_from, valid_until)
    if len(_PLANS) >= _POLICIES_MAX:
        _PLANS.clear()
    _PLANS[key] = found
    return found


class AllowanceExhausted(Exception):
    """The worst case of a call does not fit a limit.

    ``window.key`` names the limit's counter, ``label`` says it in words, ``retry_at`` is
    the earliest moment it could fit (None: only a top-up or the person can change it).
    ``fallback_model`` is set when the policy says to downgrade rather than refuse."""

    def __init__(
        self,
        window: Window,
        state: WindowState,
        needed_micro_usd: int,
        *,
        label: str = "",
        retry_at: float | None = None,
        fallback_model: str | None = None,
    ) -> None:
        self.window = window
        self.state = state
        self.needed_micro_usd = needed_micro_usd
        self.label = label or window.key
        self.retry_at = retry_at
        self.fallback_model = fallback_model
        super().__init__(f"allowance limit {self.label} reached")


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
@dataclass(slots=True)
class Reservation:
    entry_id: str
    amount_micro_usd: int
    window: Window
    #: What is left in the tightest limit after this reservation (before it settles).
    left_micro_usd: int
    grant_id: str = ""
    #: Seconds the call was held by a ``wait`` policy before it fitted.
    waited_s: float = 0.0
    #: The bearer token the call was made with (a revoked one cuts its streams).
    token_hash: str = ""


@dataclass(frozen=True)
class LimitState:
    label: str
    key: str
    cap_micro_usd: int
    spent_micro_usd: int
    reserved_micro_usd: int
    resets_at: float | None

    @property
    def left_micro_usd(self) -> int:
        return max(0, self.cap_micro_usd - self.spent_micro_usd - self.reserved_micro_usd)


class AllowanceService:
    def __init__(self, store: Store, signing_key: bytes = b"") -> None:
        self.store = store
        self.notifier = Notifier(store, signing_key)

    def current_window(self, grant: Grant, now: float | None = None) -> Window:
        now = time.time() if now is None else now
        return current_window(
            grant.window if grant.window in ("day", "week", "month") else "month",
            now,
            grant.timezone,
        )

    async def limits(self, grant: Grant, now: float | None = None) -> list[LimitState]:
        """The state of every grant-wide and per-model limit, tightest first."""
        now = time.time() if now is None else now
        policy = policy_of(grant)
        out: list[LimitState] = []
        for lim in policy.limits:
            if lim.period == "rolling":
                assert lim.seconds is not None
                used, oldest = await rolling_used(
                    self.store.engine, grant.id, lim.seconds, lim.model, now
                )
                out.append(
                    LimitState(
                        lim.label,
                        f"rolling:{lim.seconds}",
                        lim.cap_micro_usd,
                        used,
                        0,
                        (oldest + lim.seconds) if oldest else None,
                    )
                )
                continue
            w = window_for(lim.period, now, grant.timezone)
            key = w.key if lim.model is None else f"model:{lim.model}:{w.key}"
            st = await self.store.metering.window_now(
                grant.id,
                WindowLimit(key, lim.cap_micro_usd, lim.label, w.resets_at, w.starts_at, lim.model),
                grant.updated_at,
            )
            out.append(
                LimitState(
                    lim.label,
                    key,
                    lim.cap_micro_usd,
                    st.spent_micro_usd,
                    st.reserved_micro_usd,
                    w.resets_at,
                )
            )
        out.sort(key=lambda s: s.left_micro_usd)
        return out

    async def remaining(self, grant: Grant) -> tuple[Window, WindowState]:
        """The tightest grant-wide limit, as (window, state), for pages and headers."""
        now = time.time()
        states = [s for s in await self.limits(grant, now) if not s.key.startswith("model:")]
        if not states:
            window = self.current_window(grant, now)
            return window, WindowState(window.key, grant.cap_micro_usd, 0, 0)
        s = states[0]
        window = Window(s.key, now, s.resets_at or now)
        return window, WindowState(s.key, s.cap_micro_usd, s.spent_micro_usd, s.reserved_micro_usd)

    async def reserve(
        self,
        *,
        grant: Grant,
        token_hash: str,
        provider_id: str | None,
        model: str,
        endpoint: str,
        streamed: bool,
        amount_micro_usd: int,
        tokens_bound: int | None = None,
        downgraded_from: str | None = None,
        refit: Callable[[AllowanceExhausted], tuple[int, int | None] | None] | None = None,
    ) -> Reservation:
        """Reserve ``amount_micro_usd`` under the grant's policy.

        ``refit`` (the gateway's output fit) is asked first when a limit refuses: a
        smaller (amount, tokens bound) to try at once, before waiting or downgrading;
        each answer must be smaller than the last. Raises AllowanceExhausted (after
        waiting, if the policy says so) or CredentialRevoked."""
        policy = policy_of(grant)
        started = time.monotonic()
        reloads = 0
        while True:
            try:
                reservation = await self._reserve_once(
                    grant,
                    policy,
                    token_hash,
                    provider_id,
                    model,
                    endpoint,
                    streamed,
                    amount_micro_usd,
                    tokens_bound,
                    downgraded_from,
                )
            except GrantChanged:
                # edited since the caller read it: plan again under the policy in force
                # now (a lowered cap applies to this very reservation)
                reloads += 1
                fresh = await self.store.grants.get(grant.id)
                if fresh is None or fresh.revoked_at is not None or reloads > GRANT_RELOADS:
                    raise CredentialRevoked from None
                grant, policy = fresh, policy_of(fresh)
                continue
            except AllowanceExhausted as exc:
                smaller = refit(exc) if refit is not None else None
                if smaller is not None and (smaller[0], smaller[1] or 0) < (
                    amount_micro_usd,
                    tokens_bound or 0,
                ):  # strictly smaller each time, so this ends
                    amount_micro_usd, tokens_bound = smaller
                    continue
                waited = time.monotonic() - started
                budget = policy.wait_max_s - waited
                if policy.on_exhausted == "wait" and budget > 0 and self._may_free(exc, budget):
                    delay = WAIT_POLL_S
                    if exc.retry_at is not None:
                        delay = min(WAIT_POLL_S, max(0.05, exc.retry_at - time.time()))
                    await asyncio.sleep(min(delay, budget))
                    continue
                if (
                    policy.on_exhausted == "downgrade"
                    and downgraded_from is None
                    and policy.fallback_model
                    and policy.fallback_model != model
                ):
                    exc.fallback_model = policy.fallback_model
                self.notifier.refused(grant, policy, exc, model)
                raise
            waited = time.monotonic() - started
            if waited > 0.001:
                reservation = Reservation(
                    reservation.entry_id,
                    reservation.amount_micro_usd,
                    reservation.window,
                    reservation.left_micro_usd,
                    reservation.grant_id,
                    waited,
                    token_hash,
                )
            return reservation

    @staticmethod
    def _may_free(exc: AllowanceExhausted, budget: float) -> bool:
        """Could waiting help? Calendar resets too far away and per-call ceilings cannot."""
        if exc.label == "per-call ceiling":
            return False
        if exc.window.key == "wallet":
            return True  # a top-up may arrive at any moment
        if exc.retry_at is None:
            return True  # calls in flight may settle below their reservation
        return exc.retry_at - time.time() <= budget or exc.state.reserved_micro_usd > 0

    async def _reserve_once(
        self,
        grant: Grant,
        policy: Policy,
        token_hash: str,
        provider_id: str | None,
        model: str,
        endpoint: str,
        streamed: bool,
        amount: int,
        tokens_bound: int | None,
        downgraded_from: str | None,
    ) -> Reservation:
        now = time.time()
        ceiling = policy.per_call_ceiling_micro_usd
        if ceiling is not None and amount > ceiling:
            w = Window("per_call_ceiling", now, now)
            raise AllowanceExhausted(
                w, WindowState("per_call_ceiling", ceiling, 0, 0), amount, label="per-call ceiling"
            )
        plan = _plan(grant, policy, model, now)
        windows, rolling, rates, by_key = plan.windows, plan.rolling, plan.rates, plan.by_key
        month = plan.month
        entry_id = new_sortable_id()
        result: Reserved | Refused | NotHere = NOT_HERE
        hot = self.store.hot
        wb = hot.writeback if hot is not None else None
        if wb is not None and not rolling and rates is None and not policy.use_wallet:
            # the serving process's in-memory decision, without the repository's layer
            # of keyword arguments (what ``MeteringRepo.reserve`` would do first)
            result = wb.reserve(
                ReserveRequest(
                    entry_id,
                    token_hash,
                    grant.id,
                    grant.user_id,
                    grant.client_id,
                    provider_id,
                    model,
                    endpoint,
                    streamed,
                    amount,
                    now,
                    windows,
                    tokens_reserved=tokens_bound,
                    downgraded_from=downgraded_from,
                    basis=grant.updated_at,
                )
            )
        if isinstance(result, NotHere):
            result = await self._reserve_in_store(
                entry_id,
                grant,
                policy,
                plan,
                token_hash,
                provider_id,
                model,
                endpoint,
                streamed,
                amount,
                tokens_bound,
                downgraded_from,
                now,
            )
        if isinstance(result, Refused):
            st = result.window
            retry_at = result.retry_at
            if st.window_key == "wallet":
                wallet = await self.store.wallets.get(grant.user_id)
                retry_at = month.resets_at if wallet.monthly_refill_micro_usd else None
            w = by_key.get(st.window_key) or Window(st.window_key, now, retry_at or now)
            raise AllowanceExhausted(w, st, amount, label=result.label, retry_at=retry_at)
        tightest = min(result.windows, key=lambda s: s.left_micro_usd, default=None)
        if tightest is None:  # a policy with no spending limit: report the wallet or nothing
            tightest = WindowState("unlimited", 0, 0, 0)
        w = by_key.get(tightest.window_key) or Window(tightest.window_key, now, now)
        return Reservation(
            entry_id, amount, w, tightest.left_micro_usd, grant.id, token_hash=token_hash
        )

    async def _reserve_in_store(
        self,
        entry_id: str,
        grant: Grant,
        policy: Policy,
        plan: _Plan,
        token_hash: str,
        provider_id: str | None,
        model: str,
        endpoint: str,
        streamed: bool,
        amount: int,
        tokens_bound: int | None,
        downgraded_from: str | None,
        now: float,
    ) -> Reserved | Refused:
        """The store's reservation: one transaction (PostgreSQL; SQLite outside the
        serving process, or for policies the in-memory path leaves to SQL)."""
        return await self.store.metering.reserve(
            entry_id=entry_id,
            token_hash=token_hash,
            grant_id=grant.id,
            user_id=grant.user_id,
            client_id=grant.client_id,
            provider_id=provider_id,
            model=model,
            endpoint=endpoint,
            streamed=streamed,
            amount_micro_usd=amount,
            windows=plan.windows,
            rolling=plan.rolling,
            rates=plan.rates,
            tokens_reserved=tokens_bound,
            wallet_user_id=grant.user_id if policy.use_wallet else None,
            wallet_refill_key=plan.month.key,
            downgraded_from=downgraded_from,
            now=now,
            basis=grant.updated_at,
        )

    def settle_now(self, reservation: Reservation, settlement: Settlement) -> int | None:
        """``settle`` without suspending, when the store can (SQLite's inline path and
        the write lock free); None when it cannot and ``settle`` must be awaited.

        Why: a settlement that completes in one synchronous step cannot be interrupted
        by a client's disconnect, so the gateway needs no task and shield around it."""
        hot = self.store.hot
        if hot is None:
            return None
        wb = hot.writeback
        if wb is not None:
            decided = wb.settle(reservation.entry_id, settlement, time.time())
            if decided is not None:
                return self._left_after(reservation, decided)
            if not wb.flush():  # the transactional path must see the whole batch
                return None
        states = hot.try_now(
            functools.partial(
                sqlite_hot.settle_tx,
                entry_id=reservation.entry_id,
                s=settlement,
                now=time.time(),
            ),
            metering=True,
        )
        if isinstance(states, sqlite_hot.Busy):
            return None
        return self._left_after(reservation, states)

    def _left_after(self, reservation: Reservation, states: tuple[WindowState, ...]) -> int:
        if not states:
            return reservation.left_micro_usd
        if reservation.grant_id:
            self.notifier.settled(reservation.grant_id, states)
        return min(s.left_micro_usd for s in states)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> int:
        """Settle and return what is left in the tightest limit afterwards (micro-USD)."""
        states = await self.store.metering.settle(reservation.entry_id, settlement)
        if not states:
            return reservation.left_micro_usd
        if reservation.grant_id:
            self.notifier.settled(reservation.grant_id, states)
        return min(s.left_micro_usd for s in states)


@dataclass(frozen=True)
class Verdict:
    """Whether a call of a given worst case would be admitted now (a dry run)."""

    allowed: bool
    #: The limit that would refuse it (None when allowed).
    limit: str | None
    retry_at: float | None
    limits: tuple[LimitState, ...]


async def dry_run(
    service: AllowanceService,
    grant: Grant,
    model: str,
    amount_micro_usd: int,
    tokens_bound: int | None = None,
) -> Verdict:
    """What ``reserve`` would decide now, without holding anything.

    It reads the same states the reservation checks; a concurrent call may of course take
    the room between a quote and the real call."""
    now = time.time()
    policy = policy_of(grant)
    states = [
        s
        for s in await service.limits(grant, now)
        if not s.key.startswith("model:") or s.key.startswith(f"model:{model}:")
    ]
    states.sort(key=lambda s: s.left_micro_usd)
    ceiling = policy.per_call_ceiling_micro_usd
    if ceiling is not None and amount_micro_usd > ceiling:
        return Verdict(False, "per-call ceiling", None, tuple(states))
    for s in states:
        if amount_micro_usd > s.left_micro_usd:
            return Verdict(False, s.label, s.resets_at, tuple(states))
    if policy.use_wallet:
        wallet = await service.store.wallets.get(grant.user_id)
        refill_due = (
            wallet.monthly_refill_micro_usd is not None
            and wallet.refilled_for != calendar_month(now, grant.timezone).key
        )
        available = (
            max(wallet.available_micro_usd, wallet.monthly_refill_micro_usd or 0)
            if refill_due
            else wallet.available_micro_usd
        )
        if amount_micro_usd > available:
            return Verdict(False, "wallet", None, tuple(states))
    if policy.requests_per_minute is not None or policy.tokens_per_minute is not None:
        from keyfob.store.metering import recent_activity

        calls, tokens_used, oldest = await recent_activity(service.store.engine, grant.id, now)
        retry = (oldest + 60) if oldest is not None else None
        if policy.requests_per_minute is not None and calls + 1 > policy.requests_per_minute:
            return Verdict(False, "requests per minute", retry, tuple(states))
        if (
            policy.tokens_per_minute is not None
            and tokens_bound is not None
            and tokens_used + tokens_bound > policy.tokens_per_minute
        ):
            return Verdict(False, "tokens per minute", retry, tuple(states))
    return Verdict(True, None, None, tuple(states))
