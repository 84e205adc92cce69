"""A grant's fallback chain: when the requested model's upstream fails before answering,
the next model of the chain serves the call instead.

Only failures that come before any byte is relayed count (refused connection, no first
byte in time, HTTP 429 or 5xx), so the client never sees half of one answer and half of
another. Each model of the chain must be in the grant (the chain can never widen what an
app may use) and is priced and reserved afresh: the failed attempt is settled first
(nothing charged when the upstream did no work; its reservation when a timeout means it
may have), then the next model's worst case is reserved. A reservation the allowance
refuses ends the chain, and the call fails as it would have without one. The answer
says which model failed first in ``x-keyfob-fallback-from``; the ledger row of the model
that served it names it in ``downgraded_from``.

Grants without a chain never enter this module (``has_chain`` is a substring test), and
for the others the policy is parsed only after a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from keyfob.allowance.service import (
    AllowanceExhausted,
    CredentialRevoked,
    Reservation,
    policy_of,
)
from keyfob.context import Keyfob
from keyfob.gateway.bounding import bound_for
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.headers import FALLBACK_FROM, MAX_TOKENS_LOWERED_FROM, keyfob_headers
from keyfob.gateway.meter import Meter
from keyfob.gateway.models import Resolved, resolve
from keyfob.gateway.output import Ask, limit_plan
from keyfob.gateway.state import GatewayState
from keyfob.gateway.surface import Plan, Surface
from keyfob.metering.types import Settlement
from keyfob.pricing.bounds import fixed_uses
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import ProviderAdapter, UpstreamError
from keyfob.store.records import Grant

if TYPE_CHECKING:
    from keyfob.gateway.metered import Quote

log = logging.getLogger("keyfob.gateway")


def has_chain(grant: Grant) -> bool:
    """Whether the grant's policy may name a chain: a substring test, no JSON parsing, so
    grants without one take the plain path at no cost (``send`` parses it on failure)."""
    return grant.policy_json is not None and '"fallback_chain"' in grant.policy_json


def falls_back(status: int) -> bool:
    """An upstream answer the next model of a chain may replace: rate-limited or failed."""
    return status == 429 or 500 <= status <= 599


@dataclass(slots=True)
class Attempt:
    """The model a call is being tried on, with everything the metered path answers
    with; ``send`` moves it along the chain in place."""

    resolved: Resolved
    adapter: ProviderAdapter
    plan: Plan
    api_key: str | None
    quote: Quote
    reservation: Reservation
    meter: Meter
    known: dict[str, str]

    def unpack(
        self,
    ) -> tuple[
        Resolved, ProviderAdapter, Plan, str | None, Quote, Reservation, Meter, dict[str, str]
    ]:
        return (
            self.resolved,
            self.adapter,
            self.plan,
            self.api_key,
            self.quote,
            self.reservation,
            self.meter,
            self.known,
        )


@dataclass(frozen=True)
class Hooks:
    """The metered path's own steps, handed in (metered.py imports this module)."""

    send: Callable[
        [Keyfob, ProviderAdapter, Resolved, str | None, Plan], Awaitable[aiohttp.ClientResponse]
    ]
    quote: Callable[[Keyfob, GatewayState, Resolved, TokenUsage, Ask | None], Awaitable[Quote]]
    plan: Callable[[Surface, dict[str, Any], Resolved, Any, Keyfob], Plan]


@dataclass(frozen=True, slots=True)
class Call:
    """What stays the same from one model of the chain to the next."""

    kf: Keyfob
    gw: GatewayState
    grant: Grant
    token_hash: str
    surface: Surface
    body: dict[str, Any]
    bound: TokenUsage
    streamed: bool
    ask: Ask | None = None


def next_models(chain: tuple[str, ...], current: str, tried: set[str]) -> list[str]:
    """The chain's models after ``current`` (all of it when ``current`` is not in it)."""
    start = chain.index(current) + 1 if current in chain else 0
    return [m for m in chain[start:] if m not in tried]


async def _candidate(call: Call, hooks: Hooks, canonical: str) -> tuple[Any, ...] | None:
    """Everything but the reservation for one model of the chain; None to skip it."""
    kf, gw = call.kf, call.gw
    try:
        r = resolve(call.grant, await gw.providers_of(kf, call.grant.user_id), canonical)
        adapter = gw.adapter(kf, r.provider.kind)
        plan = hooks.plan(call.surface, call.body, r, adapter, kf)
        api_key = await gw.credential(kf, r.provider)
        bound = await bound_for(kf, gw, call.surface, call.body, r)  # its own image rule...
        q = await hooks.quote(kf, gw, r, bound, call.ask)
    except GatewayError as exc:
        log.info("fallback model %s skipped: %s", canonical, exc.code)
        return None
    return r, adapter, plan, api_key, q


def _failed_settlement(
    meter: Meter, failure: UpstreamError | None, status: int | None, next_model: str
) -> Settlement:
    why = f"; fell back to {next_model}"
    if failure is not None:  # as metered.py settles it: charged when work may have happened
        if failure.reached:
            return meter.charged(f"{failure}{why}", None)
        return meter.failed(f"{failure}{why}", None)
    return meter.failed(f"upstream answered HTTP {status}{why}", status)


async def send(a: Attempt, hooks: Hooks, call: Call) -> aiohttp.ClientResponse:
    """Send attempt ``a`` upstream, moving it along the grant's fallback chain while its
    upstream fails before answering. Returns the response of the model ``a`` describes
    afterwards (possibly an error answer), or raises that model's ``UpstreamError``;
    either way ``a``'s meter is the one left to settle."""
    first_meter, first_model = a.meter, a.resolved.canonical
    chain: tuple[str, ...] | None = None
    tried = {first_model}
    resp: aiohttp.ClientResponse | None = None
    try:
        while True:
            failure: UpstreamError | None = None
            resp = None
            try:
                resp = await hooks.send(call.kf, a.adapter, a.resolved, a.api_key, a.plan)
            except UpstreamError as exc:
                failure = exc
            if resp is not None and not falls_back(resp.status):
                return resp
            if chain is None:
                chain = policy_of(call.grant).fallback_chain
            moved = False
            for model in next_models(chain, a.resolved.canonical, tried):
                tried.add(model)
                found = await _candidate(call, hooks, model)
                if found is None:
                    continue
                moved = await _move(a, call, found, failure, resp, first_model)
                break
            if not moved:
                if resp is not None:
                    return resp
                assert failure is not None
                raise failure
            if resp is not None:
                resp.close()
    except UpstreamError:
        raise  # the current attempt's failure: the metered path settles a.meter
    except BaseException:
        if resp is not None:
            resp.close()
        if a.meter is not first_meter and not a.meter.settled:
            await a.meter.settle(a.meter.charged("gateway failed before the call settled", None))
        raise


async def _move(
    a: Attempt,
    call: Call,
    found: tuple[Any, ...],
    failure: UpstreamError | None,
    resp: aiohttp.ClientResponse | None,
    first_model: str,
) -> bool:
    """Settle the failed attempt, reserve the next model; False when it does not fit."""
    r, adapter, plan, api_key, q = found
    status = resp.status if resp is not None else None
    await a.meter.settle(_failed_settlement(a.meter, failure, status, r.canonical))
    try:
        reservation = await call.kf.allowance.reserve(
            grant=call.grant,
            token_hash=call.token_hash,
            provider_id=r.provider.id,
            model=r.canonical,
            endpoint=call.surface.endpoint,
            streamed=call.streamed,
            amount_micro_usd=q.worst_micro_usd,
            tokens_bound=q.tokens_bound,
            downgraded_from=first_model,
            refit=q.refitter(call.grant) if q.output.per_choice else None,
        )
    except (AllowanceExhausted, CredentialRevoked) as exc:
        log.info("fallback to %s refused by the allowance: %s", r.canonical, type(exc).__name__)
        return False
    plan = limit_plan(plan, adapter, q.output)
    a.resolved, a.adapter, a.plan, a.api_key, a.quote = r, adapter, plan, api_key, q
    a.reservation = reservation
    a.meter = Meter.of(call.kf, reservation, q)
    a.meter.fixed_tool_uses = fixed_uses(call.bound.tool_uses)
    resets_at = reservation.window.resets_at
    a.known = {
        **keyfob_headers(
            entry_id=reservation.entry_id,
            reserved_micro_usd=q.worst_micro_usd,
            resets_at=resets_at if resets_at > time.time() else None,
        ),
        FALLBACK_FROM: first_model,
    }
    if q.output.lowered_from is not None:
        a.known[MAX_TOKENS_LOWERED_FROM] = str(q.output.lowered_from)
    return True
