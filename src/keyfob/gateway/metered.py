"""The metered request path every surface shares (DESIGN.md section 3).

Everything that can refuse a call (auth, shape, model, terms, price, allowance) runs
before the reservation, and the reservation before any byte goes upstream. From the
reservation on, every exit settles it: exact usage, our own count, the reservation
charged, or nothing when the upstream never worked.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyfob.allowance.service import AllowanceExhausted, CredentialRevoked, Reservation, policy_of
from keyfob.context import Keyfob
from keyfob.gateway import fallback
from keyfob.gateway.auth import authenticate
from keyfob.gateway.bounding import call_bound
from keyfob.gateway.deadline import deadlines
from keyfob.gateway.errors import GatewayError, invalid, unauthorized
from keyfob.gateway.estimate import estimate_async, message_text
from keyfob.gateway.headers import (
    DOWNGRADED_TO,
    MAX_TOKENS_LOWERED_FROM,
    answer_headers,
    keyfob_headers,
)
from keyfob.gateway.meter import Meter
from keyfob.gateway.models import Resolved, resolve
from keyfob.gateway.output import Ask, OutputBound, ask_of, limit_plan, output_bound, refit
from keyfob.gateway.refusals import exhausted
from keyfob.gateway.relay import MeteredStream, StreamRelay
from keyfob.gateway.state import GatewayState
from keyfob.gateway.streams import AnthropicWatcher, OpenAIWatcher, Watcher
from keyfob.gateway.surface import Plan, Surface
from keyfob.gateway.translate import Untranslatable
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
from keyfob.pricing.bounds import fixed_uses
from keyfob.pricing.prices import Price
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import ProviderAdapter, UpstreamError
from keyfob.store.records import Grant

#: Upstream answers worth one more try: nothing was relayed and no work was done.
RETRY_STATUSES = frozenset({502, 503, 529})
RETRY_DELAY_S = 0.25


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same.
@dataclass(slots=True)
class Quote:
    """Everything priced for one candidate model: what to reserve before calling it."""

    resolved: Resolved
    price: Price
    worst_micro_usd: int
    tokens_bound: int
    #: The output limit reserved for, and sent upstream (0 tokens: no output, embeddings).
    output: OutputBound
    input_tokens: int = 0
    #: Server-side tool uses bounded for (their per-use fees are part of the worst case).
    tool_uses: dict[str, int] | None = None

    def refitter(self, grant: Grant) -> Any:
        """The allowance's ``refit`` hook: a smaller output limit that fits the limit that
        refused, when the grant's policy allows fitting (None otherwise)."""
        policy = policy_of(grant)

        def hook(exc: AllowanceExhausted) -> tuple[int, int | None] | None:
            st = exc.state
            room = max(0, st.cap_micro_usd - st.spent_micro_usd - st.reserved_micro_usd)
            new = refit(
                policy,
                self.price,
                self.input_tokens,
                self.tool_uses,
                self.output,
                st.window_key,
                room,
            )
            if new is None:
                return None
            self.output = new
            usage = TokenUsage(self.input_tokens, new.tokens, tool_uses=self.tool_uses)
            self.worst_micro_usd = self.price.cost_micro_usd(usage)
            self.tokens_bound = self.input_tokens + new.tokens
            return self.worst_micro_usd, self.tokens_bound

        return hook


async def reservation_quote(
    kf: Keyfob, gw: GatewayState, r: Resolved, bound: TokenUsage, ask: Ask | None
) -> Quote:
    """Price the worst case: the surface's input bound and the output the app asked for
    (or, when it set none, the model's own maximum output), times ``n``."""
    price = await gw.price(kf, r.provider, r.upstream_model)
    limits = await gw.limits(kf, r.provider, r.upstream_model) if ask is not None else None
    out = output_bound(ask, limits, kf.settings)
    worst = (
        TokenUsage(bound.input_tokens, out.tokens, tool_uses=bound.tool_uses)
        if ask is not None
        else bound
    )
    return Quote(
        r,
        price,
        price.cost_micro_usd(worst),
        worst.input_tokens + worst.output_tokens,
        out,
        worst.input_tokens,
        bound.tool_uses,
    )


async def _reserve(
    kf: Keyfob,
    gw: GatewayState,
    grant: Grant,
    token_hash: str,
    q: Quote,
    streamed: bool,
    bound: TokenUsage,
    endpoint: str,
    ask: Ask | None,
) -> tuple[Reservation, Quote]:
    """Reserve the worst case (fitted to what is left when the policy allows it); on a
    ``downgrade`` policy, retry once on the fallback model."""
    downgraded_from: str | None = None
    for _attempt in range(2):
        try:
            reservation = await kf.allowance.reserve(
                grant=grant,
                token_hash=token_hash,
                provider_id=q.resolved.provider.id,
                model=q.resolved.canonical,
                endpoint=endpoint,
                streamed=streamed,
                amount_micro_usd=q.worst_micro_usd,
                tokens_bound=q.tokens_bound,
                downgraded_from=downgraded_from,
                refit=q.refitter(grant) if q.output.per_choice else None,
            )
            return reservation, q
        except AllowanceExhausted as exc:
            if exc.fallback_model is None or downgraded_from is not None:
                raise exhausted(exc) from None
            providers = await gw.providers_of(kf, grant.user_id)
            try:
                fallback = resolve(grant, providers, exc.fallback_model, allow_any=True)
            except GatewayError:
                raise exhausted(exc) from None
            downgraded_from = q.resolved.canonical
            q = await reservation_quote(kf, gw, fallback, bound, ask)
        except CredentialRevoked:
            gw.grants.pop(token_hash)
            raise unauthorized("the access token or its grant was revoked") from None
    raise AssertionError("unreachable")


async def read_body(kf: Keyfob, request: Request) -> dict[str, Any]:
    try:
        raw = await read_limited(request, kf.settings.max_body_bytes)
    except BodyTooLarge as exc:
        raise GatewayError(
            413, f"request body exceeds {exc.limit} bytes", code="request_too_large"
        ) from None
    return parse_json(raw)


def make_plan(
    surface: Surface, body: dict[str, Any], r: Resolved, adapter: Any, kf: Keyfob
) -> Plan:
    try:
        return surface.plan(body, r, adapter.wire, kf.settings)
    except Untranslatable as exc:
        raise invalid(
            f"model {r.canonical!r} (provider {r.provider.name!r}, {adapter.wire} wire "
            f"format) cannot serve this request: {exc}",
            code="unsupported_for_provider",
        ) from None


async def _send(
    kf: Keyfob, adapter: ProviderAdapter, r: Resolved, api_key: str | None, plan: Plan
) -> aiohttp.ClientResponse:
    """POST upstream, trying once more when the upstream provably did no work: refused
    connection, or a 502/503/529 answer (nothing has been relayed at this point)."""
    if kf.http is None:
        raise UpstreamError("no upstream session (server not started)", status=502)
    first_byte_s = kf.settings.upstream_first_byte_timeout_s
    within = deadlines(first_byte_s)  # asyncio.timeout's semantics, no timer per call
    for attempt in (1, 2):
        try:
            resp = await within.run(
                adapter.post(kf.http, r.provider, api_key, plan.path, plan.body)
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


#: The grant's fallback chain (gateway/fallback.py) runs these steps for each model.
_FALLBACK_HOOKS = fallback.Hooks(_send, reservation_quote, make_plan)


async def metered_call(request: Request, surface: Surface) -> Response:
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    token_hash, _token, grant = await authenticate(kf, gw.grants, request)
    body = await read_body(kf, request)
    surface.validate(body)
    r = resolve(grant, await gw.providers_of(kf, grant.user_id), body["model"])
    adapter = gw.adapter(kf, r.provider.kind)
    plan = make_plan(surface, body, r, adapter, kf)
    api_key = await gw.credential(kf, r.provider)
    streamed = body.get("stream") is True
    bound = await call_bound(kf, gw, grant, surface, body, r)
    ask = ask_of(surface.endpoint, body)
    reservation, q = await _reserve(
        kf,
        gw,
        grant,
        token_hash,
        await reservation_quote(kf, gw, r, bound, ask),
        streamed,
        bound,
        surface.endpoint,
        ask,
    )
    meter = Meter.of(kf, reservation, q)
    meter.fixed_tool_uses = fixed_uses(bound.tool_uses)
    known = keyfob_headers(
        entry_id=reservation.entry_id,
        reserved_micro_usd=q.worst_micro_usd,
        resets_at=(
            reservation.window.resets_at if reservation.window.resets_at > time.time() else None
        ),
    )
    if q.output.lowered_from is not None:
        known[MAX_TOKENS_LOWERED_FROM] = str(q.output.lowered_from)
    upstream: aiohttp.ClientResponse | None = None
    handed_over = False  # once the relay owns the call, it settles it
    try:
        if q.resolved is not r:  # the person's downgrade policy served its fallback model
            r = q.resolved
            known[DOWNGRADED_TO] = r.canonical
            adapter = gw.adapter(kf, r.provider.kind)
            plan = make_plan(surface, body, r, adapter, kf)
            api_key = await gw.credential(kf, r.provider)
        plan = limit_plan(plan, adapter, q.output)  # the bound reserved is the bound sent
        att = None  # a grant with a fallback chain may move the call to another model
        if fallback.has_chain(grant):
            att = fallback.Attempt(r, adapter, plan, api_key, q, reservation, meter, known)
        try:
            if att is None:
                upstream = await _send(kf, adapter, r, api_key, plan)
            else:
                call = fallback.Call(kf, gw, grant, token_hash, surface, body, bound, streamed, ask)
                upstream = await fallback.send(att, _FALLBACK_HOOKS, call)
        except UpstreamError as exc:
            if att is not None:  # the chain's last model failed
                r, meter, known = att.resolved, att.meter, att.known
            s = meter.charged(str(exc), None) if exc.reached else meter.failed(str(exc), None)
            left = await meter.settle(s)
            raise GatewayError(
                exc.status or 502,
                f"provider {r.provider.name!r}: {exc}",
                code=(
                    "upstream_unreachable"
                    if not exc.reached
                    else "upstream_timeout"
                    if exc.status == 504
                    else "upstream_error"
                ),
                type_="api_error",
                headers={
                    **known,
                    **keyfob_headers(cost_micro_usd=s.cost_micro_usd, left_micro_usd=left),
                },
            ) from None
        if att is not None:
            r, adapter, plan, api_key, q, reservation, meter, known = att.unpack()
        if upstream.status >= 400:
            raise await _error_answer(meter, upstream, api_key, r, known)
        if streamed and plan.transform is not None:
            watcher: Watcher = (
                AnthropicWatcher() if adapter.wire == "anthropic" else OpenAIWatcher()
            )
            relay = StreamRelay(
                meter,
                upstream,
                plan.estimate_body,
                watcher,
                plan.transform(watcher),
                max_output_tokens=q.output.tokens,
            )
            relay.secret = secret_bytes(api_key)  # masked in every event sent
            relay.guard = gw.streams.guard(kf, reservation)  # cut on revocation
            headers = {
                **known,
                **keyfob_headers(
                    cost_micro_usd=q.worst_micro_usd, left_micro_usd=reservation.left_micro_usd
                ),
            }
            upstream, handed_over = None, True
            return MeteredStream(relay, headers)
        return await _whole_answer(meter, upstream, plan, adapter.wire, known, api_key)
    finally:
        if upstream is not None:
            upstream.close()
        if not meter.settled and not handed_over:
            await meter.settle(meter.charged("gateway failed before the call settled", None))


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
    left = await meter.settle(s)
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
