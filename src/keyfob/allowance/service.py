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
import time
from collections.abc import Callable
from dataclasses import dataclass

from keyfob.allowance.plan import Plan, current_window, plan_for, policy_of
from keyfob.allowance.policy import Policy
from keyfob.allowance.webhooks import Notifier
from keyfob.allowance.windows import Window, calendar_month
from keyfob.metering import pending, rules
from keyfob.metering.types import (
    CounterState,
    CredentialRevoked,
    GrantChanged,
    Limit,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
    WindowState,
)
from keyfob.store import Store
from keyfob.store.records import Grant
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
    #: The limits it was reserved under (to read a settlement's counters as limits).
    limits: tuple[Limit, ...] = ()


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
    def __init__(
        self, store: Store, signing_key: bytes = b"", instance_id: str | None = None
    ) -> None:
        self.store = store
        self.notifier = Notifier(store, signing_key)
        #: This serving process, written on its reservations (the reaper's key).
        self.instance_id = instance_id

    def current_window(self, grant: Grant, now: float | None = None) -> Window:
        now = time.time() if now is None else now
        return current_window(
            grant.window if grant.window in ("day", "week", "month") else "month",
            now,
            grant.timezone,
        )

    async def limits(self, grant: Grant, now: float | None = None) -> list[LimitState]:
        """The state of every grant-wide and per-model spending limit, tightest first,
        as the next reservation will see it."""
        now = time.time() if now is None else now
        limits = [lim for lim in spending_limits(grant, now) if lim.kind in ("window", "rolling")]
        states = await self.store.ledger.states(limits, grant.updated_at)
        out = [
            LimitState(
                lim.label,
                lim.key,
                lim.cap,
                st.spent_micro_usd,
                st.reserved_micro_usd,
                lim.resets_at if lim.kind == "window" else await self._rolling_frees(lim, grant),
            )
            for lim, st in zip(limits, states, strict=True)
        ]
        out.sort(key=lambda s: s.left_micro_usd)
        return out

    async def _rolling_frees(self, lim: Limit, grant: Grant) -> float | None:
        """When the oldest spend still inside a rolling window leaves it (None: none)."""
        for c in lim.counters:
            spent, reserved = await self.store.ledger.counter(c.scope, c.key)
            if (spent or reserved) and c.starts_at is not None:
                return c.starts_at + lim.bucket_s + lim.span_s
        return None

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
                    reservation.limits,
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
        plan = plan_for(grant, policy, model, now)
        req = ReserveRequest(
            new_sortable_id(),
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
            plan.limits,
            tokens_bound,
            plan.refill,
            downgraded_from,
            grant.updated_at,
            self.instance_id,
        )
        result = await self.store.metering.reserve(req)
        if isinstance(result, Refused) and pending.unfinished(grant.user_id):
            # calls of this process that ended may still be settling (their answers did
            # not wait): a sequential client is never refused for room its last call
            # freed (the person's calls only: every limit, the wallet too, is theirs)
            await pending.settled(user_id=grant.user_id)
            result = await self.store.metering.reserve(req)
        if isinstance(result, Refused):
            raise await self._exhausted(grant, plan, result, amount, now)
        return self._reservation(req, plan, result, grant, token_hash, now)

    async def _exhausted(
        self, grant: Grant, plan: Plan, refused: Refused, amount: int, now: float
    ) -> AllowanceExhausted:
        st = refused.window
        retry_at = refused.retry_at
        if st.window_key == "wallet":
            wallet = await self.store.wallets.get(grant.user_id)
            retry_at = plan.month.resets_at if wallet.monthly_refill_micro_usd else None
        w = plan.by_key.get(st.window_key) or Window(st.window_key, now, retry_at or now)
        return AllowanceExhausted(w, st, amount, label=refused.label, retry_at=retry_at)

    @staticmethod
    def _reservation(
        req: ReserveRequest, plan: Plan, result: Reserved, grant: Grant, token_hash: str, now: float
    ) -> Reservation:
        tightest: WindowState | None = None
        for lim, state in zip(plan.limits, result.windows, strict=True):
            if lim.kind != "rate" and (
                tightest is None or state.left_micro_usd < tightest.left_micro_usd
            ):
                tightest = state
        if tightest is None:  # a policy with no spending limit: nothing to report
            tightest = WindowState("unlimited", 0, 0, 0)
        w = plan.by_key.get(tightest.window_key) or Window(tightest.window_key, now, now)
        return Reservation(
            req.entry_id,
            req.amount_micro_usd,
            w,
            tightest.left_micro_usd,
            grant.id,
            token_hash=token_hash,
            limits=plan.limits,
        )

    def settle_now(self, reservation: Reservation, settlement: Settlement) -> int | None:
        """``settle`` without suspending, when the backend can (None: ``settle`` must be
        awaited). Why: a settlement that completes in one synchronous step cannot be
        interrupted by a client's disconnect, so the gateway needs no task and shield."""
        moved = self.store.metering.settle_now(reservation.entry_id, settlement, time.time())
        if moved is None:
            return None
        return self._left_after(reservation, moved)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> int:
        """Settle and return what is left in the tightest limit afterwards (micro-USD)."""
        moved = await self.store.metering.settle(reservation.entry_id, settlement)
        return self._left_after(reservation, moved)

    def _left_after(self, reservation: Reservation, moved: tuple[CounterState, ...]) -> int:
        """What is left in the tightest single-counter limit (calendar windows, the
        wallet) after the settlement moved its counters; the thresholds it crossed are
        announced."""
        if not moved:
            return reservation.left_micro_usd
        by_counter = {(m.scope, m.key): m for m in moved}
        states = []
        for lim in reservation.limits:
            if lim.kind not in ("window", "wallet"):
                continue
            c = lim.counters[-1]
            m = by_counter.get((c.scope, c.key))
            if m is not None:
                states.append(rules.state_of(lim, m.spent, m.reserved))
        if not states:
            return reservation.left_micro_usd
        if reservation.grant_id:
            self.notifier.settled(reservation.grant_id, tuple(states))
        return min(s.left_micro_usd for s in states)


def left_once_settled(reservation: Reservation, cost_micro_usd: int) -> int:
    """What ``AllowanceService.settle`` will report left for a call settled at
    ``cost_micro_usd``, before it has been written: the reservation's room plus what the
    call did not use (every money limit of the call moves by the same amount). Calls of
    the grant settled or reserved meanwhile are not in it, as in any answer's snapshot."""
    return max(0, reservation.left_micro_usd + reservation.amount_micro_usd - cost_micro_usd)


def spending_limits(grant: Grant, now: float) -> list[Limit]:
    """Every limit of the grant's policy, per-model ones for every model they name."""
    policy = policy_of(grant)
    models = sorted({lim.model for lim in policy.limits if lim.model is not None})
    seen: dict[str, Limit] = {}
    for model in ["", *models]:
        for lim in plan_for(grant, policy, model, now).limits:
            seen.setdefault(lim.key + "|" + lim.label, lim)
    return list(seen.values())


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
    plan = plan_for(grant, policy, model, now)
    limits = [lim for lim in plan.limits if lim.kind != "wallet"]
    values = await service.store.ledger.values(limits, grant.updated_at)
    for lim, vals in zip(limits, values, strict=True):
        need = rules.hold_of(rules.measure_of(lim.counters[-1].key), amount_micro_usd, tokens_bound)
        if sum(a + b for a, b in vals) + need > lim.cap:
            return Verdict(False, lim.label, rules.retry_at(lim, vals, need), tuple(states))
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
    return Verdict(True, None, None, tuple(states))
