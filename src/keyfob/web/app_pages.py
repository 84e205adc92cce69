"""An app's page (what it cost, every limit, its calls, CSV export) and revoking it with a
confirmation. Revoked apps keep their page and history: only their access ends."""

from __future__ import annotations

import csv
import io
import time
from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.allowance.service import policy_of
from keyfob.allowance.windows import calendar_day, calendar_month, calendar_week, zone
from keyfob.money import format_usd
from keyfob.store import reports
from keyfob.store.records import Grant, LedgerEntry, User
from keyfob.web.forms import FormError, read_form
from keyfob.web.overview import limit_view
from keyfob.web.render import (
    current_user,
    error_page,
    flash,
    kf_of,
    local_time,
    login_redirect,
    page,
    redirect,
)

PAGE_SIZE = 50
CSV_MAX_ROWS = 100_000
RANGE_LABELS = {
    "day": "Today",
    "week": "This week",
    "month": "This month",
    "all": "All time",
    "custom": "Chosen dates",
}
STATUS_WORDS = {
    "settled": "ok",
    "estimated": "ok, usage estimated",
    "charged_reservation": "charged its hold",
    "failed": "failed",
    "reserved": "in flight",
}


async def owned_grant(request: Request) -> tuple[User, Grant] | Response:
    """The signed-in person and their grant from the path, or the page to show instead."""
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    grant = await kf_of(request).store.grants.get(request.path_params["grant_id"][:64])
    if grant is None or grant.user_id != user.id:
        return error_page(
            request,
            404,
            "No such app",
            "This app is not among the apps you allowed.",
            user,
            next_step="Go back to the overview to see the apps you allowed.",
        )
    return user, grant


def _day(text: str, tz: str) -> float | None:
    try:
        d = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime(d.year, d.month, d.day, tzinfo=zone(tz)).timestamp()


def span_of(params: Any, tz: str, now: float) -> tuple[str, float | None, float | None, str]:
    """(range, since, until, error) from ``range=day|week|month|all`` or since/until dates."""
    chosen = params.get("range") or ("custom" if params.get("since") else "month")
    if chosen == "day":
        return chosen, calendar_day(now, tz).starts_at, None, ""
    if chosen == "week":
        return chosen, calendar_week(now, tz).starts_at, None, ""
    if chosen == "all":
        return chosen, None, None, ""
    if chosen == "custom":
        since = _day(params.get("since", ""), tz)
        until_day = _day(params.get("until", ""), tz) if params.get("until") else None
        if since is None:
            return "month", calendar_month(now, tz).starts_at, None, "Enter a start date."
        until = until_day + 86400 if until_day is not None else None  # inclusive end day
        if until is not None and until <= since:
            return "custom", since, None, "The end date is before the start date."
        return chosen, since, until, ""
    return "month", calendar_month(now, tz).starts_at, None, ""


def _before(text: str | None) -> tuple[float, str] | None:
    if not text or ":" not in text:
        return None
    at, _, entry_id = text.partition(":")
    try:
        return float(at), entry_id[:64]
    except ValueError:
        return None


def call_view(e: LedgerEntry) -> dict[str, Any]:
    cost = e.reserved_micro_usd if e.status == "reserved" else (e.cost_micro_usd or 0)
    return {
        "at": e.created_at,
        "model": e.model,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cost": cost,
        "status": STATUS_WORDS.get(e.status, e.status),
        "failed": e.status == "failed",
        "fallback_from": e.downgraded_from,
        "flagged": e.needs_reconciliation or e.usage_source in ("estimated", "reservation"),
        "streamed": e.streamed,
        "error": e.error,
    }


async def grant_page(request: Request) -> Response:
    found = await owned_grant(request)
    if isinstance(found, Response):
        return found
    user, grant = found
    kf = kf_of(request)
    now = time.time()
    tz = user.timezone
    chosen, since, until, range_error = span_of(request.query_params, tz, now)
    client = await kf.store.clients.get(grant.client_id)
    calls = await reports.grant_calls(
        kf.store.engine,
        grant.id,
        since=since,
        until=until,
        before=_before(request.query_params.get("before")),
        limit=PAGE_SIZE + 1,
    )
    more = len(calls) > PAGE_SIZE
    calls = calls[:PAGE_SIZE]
    totals = await reports.grant_totals(kf.store.engine, grant.id, since, until)
    used = (await reports.last_used(kf.store.engine, user.id)).get(grant.id)
    policy = policy_of(grant)
    query = {"range": chosen}
    if chosen == "custom":
        query.update(since=request.query_params.get("since", ""))
        if request.query_params.get("until"):
            query["until"] = request.query_params["until"]
    return page(
        request,
        "grant.html",
        user=user,
        nav="overview",
        grant=grant,
        app_name=client.name if client else grant.client_id,
        client=client,
        tz=tz,
        now=now,
        last_used=used,
        limits=[limit_view(s, tz) for s in await kf.allowance.limits(grant)]
        if grant.active
        else [],
        policy=policy,
        range=chosen,
        range_label=RANGE_LABELS[chosen],
        range_error=range_error,
        since_text=request.query_params.get("since", "")[:10],
        until_text=request.query_params.get("until", "")[:10],
        query="&".join(f"{k}={v}" for k, v in query.items()),
        totals=totals,
        calls=[call_view(e) for e in calls],
        next_before=f"{calls[-1].created_at!r}:{calls[-1].id}" if more and calls else None,
        refusals=await kf.store.refusals.recent(user.id, grant_id=grant.id, limit=5),
    )


async def calls_csv(request: Request) -> Response:
    """Every call of the range as CSV (exact micro-dollar amounts, UTC and local times)."""
    found = await owned_grant(request)
    if isinstance(found, Response):
        return found
    user, grant = found
    kf = kf_of(request)
    chosen, since, until, _error = span_of(request.query_params, user.timezone, time.time())
    rows = await reports.grant_calls(
        kf.store.engine, grant.id, since=since, until=until, limit=CSV_MAX_ROWS
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "time_utc",
            f"time_local ({user.timezone})",
            "model",
            "fallback_from",
            "status",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "reasoning_tokens",
            "cost_usd",
            "usage_source",
            "needs_reconciliation",
            "streamed",
            "id",
        ]
    )
    for e in rows:
        cost = e.reserved_micro_usd if e.status == "reserved" else (e.cost_micro_usd or 0)
        writer.writerow(
            [
                local_time(e.created_at, "UTC", "%Y-%m-%dT%H:%M:%SZ"),
                local_time(e.created_at, user.timezone, "%Y-%m-%d %H:%M:%S"),
                e.model,
                e.downgraded_from or "",
                e.status,
                e.input_tokens if e.input_tokens is not None else "",
                e.output_tokens if e.output_tokens is not None else "",
                e.cached_input_tokens if e.cached_input_tokens is not None else "",
                e.reasoning_tokens if e.reasoning_tokens is not None else "",
                format_usd(cost),
                e.usage_source or "",
                "yes" if e.needs_reconciliation else "no",
                "yes" if e.streamed else "no",
                e.id,
            ]
        )
    name = f"keyfob-calls-{grant.id[:8]}-{chosen}.csv"
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def revoke_grant(request: Request) -> Response:
    """GET: ask for confirmation. POST: end the grant and its tokens at once."""
    found = await owned_grant(request)
    if isinstance(found, Response):
        return found
    user, grant = found
    kf = kf_of(request)
    client = await kf.store.clients.get(grant.client_id)
    name = client.name if client else grant.client_id
    if request.method == "GET":
        if not grant.active:
            flash(request, f"{name} was already revoked.")
            return redirect(f"/grants/{grant.id}")
        month = await reports.grant_totals(
            kf.store.engine, grant.id, calendar_month(time.time(), user.timezone).starts_at
        )
        return page(
            request,
            "revoke_confirm.html",
            user=user,
            nav="overview",
            grant=grant,
            app_name=name,
            month=month,
        )
    try:
        await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(
            request,
            exc.status,
            "The form could not be accepted",
            exc.message,
            user,
        )
    await kf.store.grants.revoke(grant.id)
    flash(
        request,
        f"Revoked {name}: its tokens stopped working. Its history stays here; "
        "the app must ask again to get access back.",
    )
    return redirect("/")


ROUTES: list[BaseRoute] = [
    Route("/grants/{grant_id}", grant_page, methods=["GET"]),
    Route("/grants/{grant_id}/calls.csv", calls_csv, methods=["GET"]),
    Route("/grants/{grant_id}/revoke", revoke_grant, methods=["GET", "POST"]),
]
