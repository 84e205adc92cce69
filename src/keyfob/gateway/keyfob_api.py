"""Keyfob's own API for apps, beside the OpenAI surface (same bearer token):

- ``POST /v1/keyfob/quote``: for a chat-completions body, its worst-case and expected
  cost, and whether it would be admitted now and, if not, by which limit;
- ``GET /v1/keyfob/allowance``: every limit of the grant with what is spent, held, left
  and when it resets;
- ``GET /v1/keyfob/usage``: the grant's usage grouped by ``by=app,model,day``, as JSON or
  ``format=csv``, optionally ``since``/``until`` (YYYY-MM-DD in the person's zone).

"Expected" output tokens are the mean of the grant's last 50 settled calls to the model,
or, with no history, a quarter of the call's output bound: an estimate to plan with; the
worst case is what is reserved.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from keyfob.allowance.service import LimitState, dry_run
from keyfob.allowance.usage import parse_groups, summarize, to_csv
from keyfob.allowance.windows import zone
from keyfob.context import Keyfob
from keyfob.gateway.auth import authenticate
from keyfob.gateway.errors import GatewayError, bounded
from keyfob.gateway.estimate import input_tokens as estimate_input_tokens
from keyfob.gateway.headers import iso_utc
from keyfob.gateway.models import resolve
from keyfob.gateway.state import GatewayState
from keyfob.gateway.validate import chat_body, parse_json
from keyfob.limits import BodyTooLarge, read_limited
from keyfob.money import format_usd
from keyfob.pricing.bounds import chat_input, chat_output_bound
from keyfob.pricing.usage import TokenUsage
from keyfob.store.metering import typical_output_tokens, usage_rows


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


async def quote(request: Request) -> Response:
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
    chat_body(body)
    r = resolve(grant, await gw.providers_of(kf, grant.user_id), body["model"])
    price = await gw.price(kf, r.provider, r.upstream_model)
    s = kf.settings
    inp = bounded(
        chat_input, body, r.upstream_model, await gw.limits(kf, r.provider, r.upstream_model)
    )
    worst = inp.usage(
        chat_output_bound(body, default_max_output_tokens=s.default_max_output_tokens)
    )
    worst_micro = price.cost_micro_usd(worst)
    typical = await typical_output_tokens(kf.store.engine, grant.id, r.canonical)
    expected_out = min(
        worst.output_tokens, typical if typical is not None else max(1, worst.output_tokens // 4)
    )
    expected = TokenUsage(min(worst.input_tokens, estimate_input_tokens(body)), expected_out)
    verdict = await dry_run(
        kf.allowance, grant, r.canonical, worst_micro, worst.input_tokens + worst.output_tokens
    )
    return JSONResponse(
        {
            "object": "keyfob.quote",
            "model": r.canonical,
            "price_source": price.source,
            "worst_case": {
                "input_tokens": worst.input_tokens,
                "output_tokens": worst.output_tokens,
                "cost_usd": format_usd(worst_micro),
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
