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

This is the layer between the metered call (``metered.py``, which reserved the first
attempt) and one upstream attempt (``attempt.Attempt.send``). Grants without a chain go
straight through (``has_chain`` is a substring test), and for the others the policy is
parsed only after a failure.
"""

from __future__ import annotations

import logging

import aiohttp

from keyfob.allowance.service import AllowanceExhausted, CredentialRevoked, policy_of
from keyfob.gateway.attempt import Attempt, Unanswered
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.headers import FALLBACK_FROM
from keyfob.providers import UpstreamError
from keyfob.store.records import Grant

log = logging.getLogger("keyfob.gateway")


def has_chain(grant: Grant) -> bool:
    """Whether the grant's policy may name a chain: a substring test, no JSON parsing, so
    grants without one take the plain path at no cost (``send`` parses it on failure)."""
    return grant.policy_json is not None and '"fallback_chain"' in grant.policy_json


def falls_back(status: int) -> bool:
    """An upstream answer the next model of a chain may replace: rate-limited or failed."""
    return status == 429 or 500 <= status <= 599


def next_models(chain: tuple[str, ...], current: str, tried: set[str]) -> list[str]:
    """The chain's models after ``current`` (all of it when ``current`` is not in it)."""
    start = chain.index(current) + 1 if current in chain else 0
    return [m for m in chain[start:] if m not in tried]


async def send(a: Attempt) -> tuple[Attempt, aiohttp.ClientResponse]:
    """Send the reserved attempt ``a`` upstream, moving the call along the grant's
    fallback chain while its upstream fails before answering.

    Returns the attempt that answered and its response (possibly an error answer), or
    raises ``Unanswered`` naming the attempt whose upstream failed last; either way that
    attempt's meter is the one left to settle (the earlier ones are settled here)."""
    if not has_chain(a.call.grant):
        try:
            return a, await a.send()
        except UpstreamError as exc:
            raise Unanswered(a, exc) from None
    first = a
    chain: tuple[str, ...] | None = None
    tried = {a.resolved.canonical}
    resp: aiohttp.ClientResponse | None = None
    try:
        while True:
            failure: UpstreamError | None = None
            resp = None
            try:
                resp = await a.send()
            except UpstreamError as exc:
                failure = exc
            if resp is not None and not falls_back(resp.status):
                return a, resp
            if chain is None:
                chain = policy_of(a.call.grant).fallback_chain
            moved: Attempt | None = None
            for model in next_models(chain, a.resolved.canonical, tried):
                tried.add(model)
                found = await _candidate(a, model)
                if found is not None:
                    moved = await _move(a, found, failure, resp, first)
                    break
            if moved is None:
                if resp is not None:
                    return a, resp
                assert failure is not None
                raise Unanswered(a, failure)
            if resp is not None:
                resp.close()
            a = moved
    except Unanswered:
        raise  # the current attempt's failure: the metered path settles its meter
    except BaseException:
        if resp is not None:
            resp.close()
        if a is not first and not a.meter.settled:
            await a.meter.settle(a.meter.charged("gateway failed before the call settled", None))
        raise


async def _candidate(a: Attempt, canonical: str) -> Attempt | None:
    """The chain's next model prepared (its own bounds: image rule, context window...);
    None to skip it."""
    call = a.call
    try:
        return await Attempt.prepare(call, await call.resolve(canonical))
    except GatewayError as exc:
        log.info("fallback model %s skipped: %s", canonical, exc.code)
        return None


async def _move(
    a: Attempt,
    b: Attempt,
    failure: UpstreamError | None,
    resp: aiohttp.ClientResponse | None,
    first: Attempt,
) -> Attempt | None:
    """Settle the failed attempt ``a``, reserve ``b``; None when ``b`` does not fit."""
    why = f"; fell back to {b.resolved.canonical}"
    if failure is not None:
        await a.meter.settle(a.meter.unanswered(failure, why))
    else:
        assert resp is not None
        status = resp.status
        await a.meter.settle(a.meter.failed(f"upstream answered HTTP {status}{why}", status))
    try:
        await b.reserve(downgraded_from=first.resolved.canonical)
    except (AllowanceExhausted, CredentialRevoked) as exc:
        log.info(
            "fallback to %s refused by the allowance: %s", b.resolved.canonical, type(exc).__name__
        )
        return None
    b.known[FALLBACK_FROM] = first.resolved.canonical
    return b
