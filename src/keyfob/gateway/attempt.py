"""One try of a call on one model: the innermost layer of the metered path.

A call may be tried on several models: the one the app asked for, the person's
downgrade model when the allowance refuses it (``metered.py``), the models of the
grant's fallback chain when an upstream fails (``fallback.py``). Each try is an
``Attempt``, and every rule about a try lives here, once:

- ``Attempt.prepare``: the model's adapter, the plan for its wire format, the credential
  (terms checked) and the worst case quoted; everything that can refuse a call before
  money moves, in that order;
- ``Attempt.reserve``: the worst case held (fitted to what is left when the grant allows
  it), the output limit reserved written into the upstream body, the meter that settles
  the try and the headers it answers with;
- ``Attempt.send``: the one upstream request, tried once more only when the upstream
  provably did no work.

The layers around it (as HTTPX's ``send`` -> ``_send_handling_auth`` ->
``_send_handling_redirects`` -> ``_send_single_request``): ``metered.metered_call``
(auth, body, answer) -> ``metered.reserve_or_downgrade`` -> ``fallback.send`` ->
``Attempt.send``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from keyfob.allowance.service import Reservation
from keyfob.context import Keyfob
from keyfob.gateway.bounding import bound_for, call_bound
from keyfob.gateway.deadline import deadlines
from keyfob.gateway.errors import invalid
from keyfob.gateway.headers import MAX_TOKENS_LOWERED_FROM, keyfob_headers
from keyfob.gateway.meter import Meter
from keyfob.gateway.models import Resolved, resolve
from keyfob.gateway.output import Ask, limit_plan
from keyfob.gateway.quote import Quote, quote
from keyfob.gateway.state import GatewayState
from keyfob.gateway.surface import Plan, Surface
from keyfob.gateway.translate import Untranslatable
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import ProviderAdapter, UpstreamError
from keyfob.store.records import Grant

#: Upstream answers worth one more try: nothing was relayed and no work was done.
RETRY_STATUSES = frozenset({502, 503, 529})
RETRY_DELAY_S = 0.25


@dataclass(slots=True)
class Call:
    """What stays the same from one attempt of a call to the next."""

    kf: Keyfob
    gw: GatewayState
    grant: Grant
    token_hash: str
    surface: Surface
    body: dict[str, Any]
    streamed: bool
    ask: Ask | None

    async def resolve(self, model: str, *, allow_any: bool = False) -> Resolved:
        """``model`` for this grant (``allow_any``: the person's own downgrade model,
        which need not be in the grant's list)."""
        providers = await self.gw.providers_of(self.kf, self.grant.user_id)
        return resolve(self.grant, providers, model, allow_any=allow_any)


def make_plan(
    surface: Surface, body: dict[str, Any], r: Resolved, adapter: ProviderAdapter, kf: Keyfob
) -> Plan:
    """The surface's plan for the provider's wire format; a 400 when it cannot serve."""
    try:
        return surface.plan(body, r, adapter.wire, kf.settings)
    except Untranslatable as exc:
        raise invalid(
            f"model {r.canonical!r} (provider {r.provider.name!r}, {adapter.wire} wire "
            f"format) cannot serve this request: {exc}",
            code="unsupported_for_provider",
        ) from None


#: Not frozen, for speed (built on every call; see ``quote.Quote``).
@dataclass(slots=True)
class Attempt:
    """The call tried on one model. ``reservation``, ``meter`` and ``known`` exist once
    ``reserve`` succeeded; from then on the meter must be settled exactly once."""

    call: Call
    resolved: Resolved
    adapter: ProviderAdapter
    plan: Plan
    api_key: str | None
    #: The input bound quoted for (the first attempt's also covers the downgrade model).
    bound: TokenUsage
    quote: Quote
    reservation: Reservation = field(init=False)
    meter: Meter = field(init=False)
    #: The ``x-keyfob-*`` headers every answer of this attempt carries.
    known: dict[str, str] = field(init=False)

    @classmethod
    async def prepare(
        cls,
        call: Call,
        r: Resolved,
        *,
        bound: TokenUsage | None = None,
        widen: bool = False,
    ) -> Attempt:
        """Plan and quote the call on ``r``: a 400 (or the terms' refusal) before any
        money moves. ``bound`` reuses another attempt's input bound (the downgrade, which
        the first bound already covers); else it is computed for ``r``, and with
        ``widen`` made to cover the grant's downgrade model too (the first attempt)."""
        kf, gw = call.kf, call.gw
        adapter = gw.adapter(kf, r.provider.kind)
        plan = make_plan(call.surface, call.body, r, adapter, kf)
        api_key = await gw.credential(kf, r.provider)
        if bound is None:
            bound = await (
                call_bound(kf, gw, call.grant, call.surface, call.body, r)
                if widen
                else bound_for(kf, gw, call.surface, call.body, r)
            )
        q = await quote(kf, gw, r, bound, call.ask)
        return cls(call, r, adapter, plan, api_key, bound, q)

    async def reserve(self, downgraded_from: str | None = None) -> None:
        """Hold the worst case (raises ``AllowanceExhausted`` or ``CredentialRevoked``);
        then the bound reserved is the bound sent, and the meter and headers exist."""
        call, q = self.call, self.quote
        grant = call.grant
        self.reservation = reservation = await call.kf.allowance.reserve(
            grant=grant,
            token_hash=call.token_hash,
            provider_id=self.resolved.provider.id,
            model=self.resolved.canonical,
            endpoint=call.surface.endpoint,
            streamed=call.streamed,
            amount_micro_usd=q.worst_micro_usd,
            tokens_bound=q.tokens_bound,
            downgraded_from=downgraded_from,
            refit=q.refitter(grant),
        )
        self.plan = limit_plan(self.plan, self.adapter, q.output)
        self.meter = Meter.of(call.kf, reservation, q)
        resets_at = reservation.window.resets_at
        self.known = known = keyfob_headers(
            entry_id=reservation.entry_id,
            reserved_micro_usd=q.worst_micro_usd,
            resets_at=resets_at if resets_at > time.time() else None,
        )
        if q.output.lowered_from is not None:
            known[MAX_TOKENS_LOWERED_FROM] = str(q.output.lowered_from)

    async def send(self) -> aiohttp.ClientResponse:
        """POST upstream, trying once more when the upstream provably did no work: refused
        connection, or a 502/503/529 answer (nothing has been relayed at this point)."""
        kf = self.call.kf
        if kf.http is None:
            raise UpstreamError("no upstream session (server not started)", status=502)
        first_byte_s = kf.settings.upstream_first_byte_timeout_s
        within = deadlines(first_byte_s)  # asyncio.timeout's semantics, no timer per call
        adapter, provider, plan = self.adapter, self.resolved.provider, self.plan
        for attempt in (1, 2):
            try:
                resp = await within.run(
                    adapter.post(kf.http, provider, self.api_key, plan.path, plan.body)
                )
            except TimeoutError:
                raise UpstreamError(
                    f"no answer within {first_byte_s:g} s", status=504, reached=True
                ) from None
            except UpstreamError as exc:
                if exc.reached or attempt == 2:
                    raise
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if resp.status in RETRY_STATUSES and attempt == 1:
                resp.close()
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            return resp
        raise AssertionError("unreachable")


class Unanswered(Exception):
    """The upstream of ``attempt`` failed before answering (``error``); the attempt's
    meter is the one left to settle."""

    def __init__(self, attempt: Attempt, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.attempt = attempt
        self.error = error
