"""Keyfob's own API for apps, beside the OpenAI surface (same bearer token):

- ``POST /v1/keyfob/quote``: for a chat-completions body, its worst-case and expected
  cost, and whether it would be admitted now and, if not, by which limit;
- ``GET /v1/keyfob/allowance``: every limit of the grant with what is spent, held, left
  and when it resets;
- ``GET /v1/keyfob/usage``: the grant's usage grouped by ``by=app,model,day``, as JSON or
  ``format=csv``, optionally ``since``/``until`` (YYYY-MM-DD in the person's zone).

"Expected" output tokens are the mean of the grant's last 50 settled calls to the model,
or, with no history, a quarter of the call's output bound: an estimate to plan with; the
worst case is what is reserved (``output_limit``: the per-choice limit the call would be
sent, lowered when it would be fitted to what is left).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from keyfob.allowance.service import LimitState, Verdict, dry_run, policy_of
from keyfob.allowance.usage import parse_groups, summarize, to_csv
from keyfob.allowance.windows import zone
from keyfob.context import Keyfob
from keyfob.gateway.auth import authenticate
from keyfob.gateway.bounding import call_bound
from keyfob.gateway.chat import SURFACE as CHAT
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.estimate import input_tokens as estimate_input_tokens
from keyfob.gateway.headers import iso_utc
from keyfob.gateway.models import resolve
from keyfob.gateway.output import ask_of, refit
from keyfob.gateway.quote import Quote
from keyfob.gateway.quote import quote as reservation_quote
from keyfob.gateway.state import GatewayState
from keyfob.gateway.validate import parse_json
from keyfob.limits import BodyTooLarge, read_limited
from keyfob.money import format_usd
from keyfob.pricing.usage import TokenUsage
from keyfob.store.metering.reads import typical_output_tokens, usage_rows
from keyfob.store.records import Grant


def _limit_json(s: LimitState) -> dict[str, Any]:
    return {
        "limit": s.label,
        "key": s.key,
        "cap_usd": format_usd(s.cap_micro_usd),
        "spent_usd": format_usd(s.spent_micro_usd),
        "held_usd": format_usd(s.reserved_micro_usd),
        "left_usd": format_usd(s.left_micro_usd),
        "resets_at": iso_utc(s.resets_at) if s.resets_at else None,
    }


async def _fit(kf: Keyfob, grant: Grant, q: Quote, verdict: Verdict) -> tuple[Quote, Verdict]:
    """What the reservation would do when a limit refuses the worst case: a smaller
    output limit that fits what that limit has left (``output.refit``, the same rule and
    floor), when the grant's policy allows fitting; again for the next limit, if any."""
    policy = policy_of(grant)
    for _ in range(len(verdict.limits) + 1):
        if verdict.allowed:
            break
        if verdict.limit == "per-call ceiling" and policy.per_call_ceiling_micro_usd is not None:
            key, room = "per_call_ceiling", policy.per_call_ceiling_micro_usd
        else:
            states = [st for st in verdict.limits if st.label == verdict.limit]
            if not states:
                break  # a rate or the wallet: the quote does not fit those
            key, room = states[0].key, states[0].left_micro_usd
        new = refit(policy, q.price, q.input_tokens, q.tool_uses, q.output, key, room)
        if new is None:
            break
        usage = TokenUsage(q.input_tokens, new.tokens, tool_uses=q.tool_uses)
        worst = q.price.cost_micro_usd(usage)
        q = replace(q, output=new, worst_micro_usd=worst, tokens_bound=q.input_tokens + new.tokens)
        verdict = await dry_run(kf.allowance, grant, q.resolved.canonical, worst, q.tokens_bound)
    return q, verdict


async def quote(request: Request) -> Response:
    """The worst case exactly as a call would be reserved: the same input bound (widened
    to the grant's downgrade model), the same output bound (the app's limit, else the
    model's own maximum output) and the same fit when a limit refuses it."""
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request, fresh=True)
    try:
        raw = await read_limited(request, kf.settings.max_body_bytes)
    except BodyTooLarge as exc:
        raise GatewayError(
            413, f"request body exceeds {exc.limit} bytes", code="request_too_large"
        ) from None
    body = parse_json(raw)
    CHAT.validate(body)
    r = resolve(grant, await gw.providers_of(kf, grant.user_id), body["model"])
    bound = await call_bound(kf, gw, grant, CHAT, body, r)
    q = await reservation_quote(kf, gw, r, bound, ask_of(CHAT.endpoint, body))
    verdict = await dry_run(kf.allowance, grant, r.canonical, q.worst_micro_usd, q.tokens_bound)
    q, verdict = await _fit(kf, grant, q, verdict)
    price = q.price
    worst = TokenUsage(q.input_tokens, q.output.tokens, tool_uses=q.tool_uses)
    typical = await typical_output_tokens(kf.store.engine, grant.id, r.canonical)
    expected_out = min(
        worst.output_tokens, typical if typical is not None else max(1, worst.output_tokens // 4)
    )
    expected = TokenUsage(min(worst.input_tokens, estimate_input_tokens(body)), expected_out)
    return JSONResponse(
        {
            "object": "keyfob.quote",
            "model": r.canonical,
            "price_source": price.source,
            "worst_case": {
                "input_tokens": worst.input_tokens,
                "output_tokens": worst.output_tokens,
                "cost_usd": format_usd(q.worst_micro_usd),
            },
            "output_limit": {
                "max_tokens": q.output.per_choice,
                "n": q.output.n,
                "lowered_from": q.output.lowered_from,
            },
            "expected": {
                "input_tokens": expected.input_tokens,
                "output_tokens": expected.output_tokens,
                "output_basis": "recent calls" if typical is not None else "bound / 4",
                "cost_usd": format_usd(price.cost_micro_usd(expected)),
            },
            "allowed": verdict.allowed,
            "refused_by": verdict.limit,
            "retry_at": iso_utc(verdict.retry_at) if verdict.retry_at else None,
            "limits": [_limit_json(x) for x in verdict.limits],
        }
    )


async def allowance(request: Request) -> Response:
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request, fresh=True)
    limits = await kf.allowance.limits(grant)
    return JSONResponse(
        {
            "object": "keyfob.allowance",
            "grant_id": grant.id,
            "models": list(grant.models),
            "limits": [_limit_json(x) for x in limits],
            # when the grant ends by itself (null: never); its tokens stop then
            "expires_at": iso_utc(grant.expires_at) if grant.expires_at is not None else None,
        }
    )


def _day(text: str | None, tz: str, name: str) -> float | None:
    if not text:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise GatewayError(400, f"{name} is a date (YYYY-MM-DD)", param=name) from None
    return datetime(d.year, d.month, d.day, tzinfo=zone(tz)).timestamp()


async def usage_report(
    kf: Keyfob, user_id: str, timezone: str, params: Any, grant_id: str | None
) -> Response:
    """Shared by the app's grant-scoped API and the person's own export."""
    try:
        groups = parse_groups(params.get("by") or "app,model")
    except ValueError as exc:
        raise GatewayError(400, str(exc), param="by") from None
    fmt = params.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise GatewayError(400, "format is json or csv", param="format")
    rows = await usage_rows(
        kf.store.engine,
        user_id=user_id,
        grant_id=grant_id,
        since=_day(params.get("since"), timezone, "since"),
        until=_day(params.get("until"), timezone, "until"),
    )
    summary = summarize(rows, groups, timezone)
    if fmt == "csv":
        return PlainTextResponse(
            to_csv(summary, groups),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="keyfob-usage.csv"'},
        )
    return JSONResponse({"object": "keyfob.usage", "group_by": list(groups), "data": summary})


async def usage(request: Request) -> Response:
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request, fresh=True)
    return await usage_report(kf, grant.user_id, grant.timezone, request.query_params, grant.id)
