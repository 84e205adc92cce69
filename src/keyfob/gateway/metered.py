"""The metered request path every surface shares (docs/ARCHITECTURE.md, "How a gateway
call flows").

Everything that can refuse a call (auth, shape, model, terms, price, allowance) runs
before the reservation, and the reservation before any byte goes upstream. From the
reservation on, every exit settles it: exact usage, our own count, the reservation
charged, or nothing when the upstream never worked.

The call is layered, each layer calling the next (as HTTPX's ``send`` ->
``_send_handling_auth`` -> ``_send_handling_redirects`` -> ``_send_single_request``):

    metered_call          auth, body, the first attempt prepared; the answer, settled
    -> reserve_or_downgrade   the worst case held; refused: the person's downgrade model
    -> fallback.send          an upstream failure: the grant's fallback chain
    -> Attempt.send           one upstream request (``attempt.py``)
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyfob.allowance.service import AllowanceExhausted, CredentialRevoked
from keyfob.context import Keyfob
from keyfob.gateway import fallback
from keyfob.gateway.attempt import Attempt, Call, Unanswered
from keyfob.gateway.auth import authenticate
from keyfob.gateway.errors import GatewayError, unauthorized
from keyfob.gateway.estimate import estimate_async, message_text
from keyfob.gateway.headers import DOWNGRADED_TO, answer_headers, keyfob_headers
from keyfob.gateway.meter import Meter
from keyfob.gateway.models import Resolved
from keyfob.gateway.output import ask_of
from keyfob.gateway.refusals import exhausted
from keyfob.gateway.relay import MeteredStream, StreamRelay
from keyfob.gateway.state import GatewayState
from keyfob.gateway.streams import AnthropicWatcher, OpenAIWatcher, Watcher
from keyfob.gateway.surface import Plan, Surface
from keyfob.gateway.translate.responses import ESTIMATED_FLAG
from keyfob.gateway.upstream_errors import (
    MAX_ERROR_BODY,
    mask_bytes,
    passed_headers,
    secret_bytes,
    upstream_error,
)
from keyfob.gateway.validate import loads, parse_json
from keyfob.limits import BodyTooLarge, read_limited
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import UpstreamError


async def read_body(kf: Keyfob, request: Request) -> dict[str, Any]:
    try:
        raw = await read_limited(request, kf.settings.max_body_bytes)
    except BodyTooLarge as exc:
        raise GatewayError(
            413, f"request body exceeds {exc.limit} bytes", code="request_too_large"
        ) from None
    return parse_json(raw)


async def metered_call(request: Request, surface: Surface) -> Response:
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    token_hash, _token, grant = await authenticate(kf, gw.grants, request)
    body = await read_body(kf, request)
    surface.validate(body)
    call = Call(
        kf,
        gw,
        grant,
        token_hash,
        surface,
        body,
        body.get("stream") is True,
        ask_of(surface.endpoint, body),
    )
    first = await Attempt.prepare(call, await call.resolve(body["model"]), widen=True)
    return await _answer(await reserve_or_downgrade(first))


async def reserve_or_downgrade(first: Attempt) -> Attempt:
    """Reserve the first attempt's worst case (fitted to what is left when the policy
    allows it); refused under a ``downgrade`` policy, the person's fallback model once
    (its bound is already covered by the first one: ``bounding.call_bound``)."""
    call = first.call
    try:
        try:
            await first.reserve()
            return first
        except AllowanceExhausted as exc:
            if exc.fallback_model is None:
                raise exhausted(exc) from None
            try:
                r = await call.resolve(exc.fallback_model, allow_any=True)
            except GatewayError:
                raise exhausted(exc) from None
        other = await Attempt.prepare(call, r, bound=first.bound)
        try:
            await other.reserve(downgraded_from=first.resolved.canonical)
        except AllowanceExhausted as exc:
            raise exhausted(exc) from None
        other.known[DOWNGRADED_TO] = r.canonical
        return other
    except CredentialRevoked:
        call.gw.grants.pop(call.token_hash)
        raise unauthorized("the access token or its grant was revoked") from None


async def _answer(a: Attempt) -> Response:
    """Send the reserved attempt (along the fallback chain) and answer: an error in the
    client's format, a relayed stream, or a whole answer; settled on every exit."""
    upstream: aiohttp.ClientResponse | None = None
    handed_over = False  # once the relay owns the call, it settles it
    try:
        try:
            a, upstream = await fallback.send(a)
        except Unanswered as exc:
            a = exc.attempt
            raise await _unanswered(a, exc.error) from None
        meter, known = a.meter, a.known
        if upstream.status >= 400:
            raise await _error_answer(meter, upstream, a.api_key, a.resolved, known)
        plan = a.plan
        if a.call.streamed and plan.transform is not None:
            watcher: Watcher = (
                AnthropicWatcher() if a.adapter.wire == "anthropic" else OpenAIWatcher()
            )
            relay = StreamRelay(
                meter,
                upstream,
                plan.estimate_body,
                watcher,
                plan.transform(watcher),
                max_output_tokens=a.quote.output.tokens,
            )
            relay.secret = secret_bytes(a.api_key)  # masked in every event sent
            relay.guard = a.call.gw.streams.guard(a.call.kf, a.reservation)  # cut on revocation
            headers = {
                **known,
                **keyfob_headers(
                    cost_micro_usd=a.quote.worst_micro_usd,
                    left_micro_usd=a.reservation.left_micro_usd,
                ),
            }
            upstream, handed_over = None, True
            return MeteredStream(relay, headers)
        return await _whole_answer(meter, upstream, plan, a.adapter.wire, known, a.api_key)
    finally:
        if upstream is not None:
            upstream.close()
        if not a.meter.settled and not handed_over:
            await a.meter.settle(a.meter.charged("gateway failed before the call settled", None))


async def _unanswered(a: Attempt, exc: UpstreamError) -> GatewayError:
    """Settle an attempt whose upstream never answered; the error the client gets."""
    s = a.meter.unanswered(exc)
    left = await a.meter.settle(s)
    return GatewayError(
        exc.status or 502,
        f"provider {a.resolved.provider.name!r}: {exc}",
        code=(
            "upstream_unreachable"
            if not exc.reached
            else "upstream_timeout"
            if exc.status == 504
            else "upstream_error"
        ),
        type_="api_error",
        headers={**a.known, **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left)},
    )


async def _error_answer(
    meter: Meter,
    upstream: aiohttp.ClientResponse,
    api_key: str | None,
    r: Resolved,
    known: dict[str, str],
) -> GatewayError:
    try:
        raw = await upstream.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    err = upstream_error(
        upstream.status,
        raw,
        api_key=api_key,
        retry_after=upstream.headers.get("Retry-After"),
        provider_name=r.provider.name,
    )
    usage = _usage_of(raw)
    s = (
        meter.from_usage(
            usage, status="settled", source="upstream", upstream_status=upstream.status
        )
        if usage
        else meter.failed(f"upstream answered HTTP {upstream.status}", upstream.status)
    )
    left = await meter.settle(s)
    err.headers = {
        **known,
        **passed_headers(upstream.headers, api_key),
        **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left),
        **err.headers,
    }
    return err


def _usage_of(raw: bytes) -> TokenUsage | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return TokenUsage.from_openai(usage) if isinstance(usage, dict) else None


def _usage(data: dict[str, Any], wire: str) -> TokenUsage | None:
    """The upstream's own usage report, if it sent one (the common case)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return (
        TokenUsage.from_anthropic(usage) if wire == "anthropic" else TokenUsage.from_openai(usage)
    )


def _usage_and_text(data: dict[str, Any], wire: str) -> tuple[TokenUsage | None, str]:
    usage = data.get("usage")
    if wire == "anthropic":
        parsed = TokenUsage.from_anthropic(usage) if isinstance(usage, dict) else None
        content = data.get("content")
        blocks = content if isinstance(content, list) else []
        text = "".join(
            str(b.get("text") or b.get("thinking") or json.dumps(b.get("input") or ""))
            for b in blocks
            if isinstance(b, dict)
        )
        return parsed, text
    parsed = TokenUsage.from_openai(usage) if isinstance(usage, dict) else None
    return parsed, message_text(data.get("choices"))


async def _whole_answer(
    meter: Meter,
    upstream: aiohttp.ClientResponse,
    plan: Plan,
    wire: str,
    known: dict[str, str],
    api_key: str | None = None,
) -> Response:
    status = upstream.status
    try:
        raw = mask_bytes(await upstream.read(), secret_bytes(api_key))
    except (TimeoutError, aiohttp.ClientError) as exc:
        s = meter.charged(f"upstream answer broke off ({type(exc).__name__})", status)
        left = await meter.settle(s)
        code = 504 if isinstance(exc, TimeoutError) else 502
        raise GatewayError(
            code,
            "the upstream's answer broke off",
            code="upstream_error",
            type_="api_error",
            headers={
                **known,
                **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left),
            },
        ) from None
    try:
        data = loads(raw)  # parsed only to read usage; same-format answers go out as bytes
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        s = meter.charged("upstream answer is not a JSON object", status)
        left = await meter.settle(s)
        raise GatewayError(
            502,
            "the upstream answered something that is not JSON",
            code="upstream_error",
            type_="api_error",
            headers={
                **known,
                **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left),
            },
        )
    parsed = _usage(data, wire)
    if parsed is not None:
        s = meter.from_usage(parsed, status="settled", source="upstream", upstream_status=status)
    else:
        _none, text = _usage_and_text(data, wire)  # the text only matters to count it
        counted = await estimate_async(plan.estimate_body, text)
        s = meter.from_usage(
            counted, status="estimated", source="estimated", upstream_status=status
        )
    left = meter.settle_soon(s)  # the answer does not wait for the write (meter.py)
    if plan.whole is not None:
        headers = {**known, **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left)}
        if parsed is None:  # a translated answer carries Keyfob's own count, flagged
            data["usage"] = counted.to_anthropic() if wire == "anthropic" else counted.to_openai()
        answer = plan.whole(data)
        if parsed is None and isinstance(answer.get("usage"), dict):
            answer["usage"][ESTIMATED_FLAG] = True
        return JSONResponse(answer, status_code=status, headers=headers)
    return RawHeadersResponse(
        raw,
        status,
        answer_headers(known, s.cost_micro_usd, left),
        upstream.headers.get("Content-Type", "application/json"),
    )


class RawHeadersResponse(Response):
    """A ``Response`` whose headers come already encoded (``headers.answer_headers``).

    Why: the relayed answer is the hot path's one response; Starlette's ``init_headers``
    would re-encode a dict built just for it. Content-Length and Content-Type are added
    exactly as ``init_headers`` adds them."""

    def __init__(
        self, body: bytes, status_code: int, raw: list[tuple[bytes, bytes]], media_type: str
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = body
        if not (status_code < 200 or status_code in (204, 304)):
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=" + self.charset
        raw.append((b"content-type", media_type.encode("latin-1")))
        self.raw_headers = raw
