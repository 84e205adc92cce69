"""The overview: what each app cost today, this week and this month, every limit with
its reset time, the wallet, spend per day (stacked by app or model), refused calls.

Window states come from the allowance service (the same numbers the gateway enforces);
spend over spans and per day from ``store.reports`` (the ledger)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyfob.allowance.service import LimitState
from keyfob.allowance.windows import calendar_day, calendar_month, calendar_week, zone
from keyfob.context import Keyfob
from keyfob.store import reports
from keyfob.store.records import Grant, User
from keyfob.web.charts import legend, stacked_bars
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import (
    current_user,
    error_page,
    flash,
    kf_of,
    login_redirect,
    page,
    redirect,
)

RANGES = {"7": 7, "30": 30, "90": 90}
SPANS = ("day", "week", "month")


def limit_view(s: LimitState, timezone: str) -> dict[str, Any]:
    """One limit as a bar: used (spent + held) of cap, and when it resets."""
    used = s.spent_micro_usd + s.reserved_micro_usd
    pct = 100 if s.cap_micro_usd <= 0 else min(100, round(used * 100 / s.cap_micro_usd))
    return {
        "label": s.label,
        "cap": s.cap_micro_usd,
        "used": used,
        "held": s.reserved_micro_usd,
        "left": s.left_micro_usd,
        "pct": pct,
        "resets_at": s.resets_at,
        "hot": pct >= 80,
    }


async def span_totals(kf: Keyfob, user: User, now: float) -> dict[str, dict[str, int]]:
    """Spend per grant for today, this week and this month (the person's calendar)."""
    starts = {
        "day": calendar_day(now, user.timezone).starts_at,
        "week": calendar_week(now, user.timezone).starts_at,
        "month": calendar_month(now, user.timezone).starts_at,
    }
    return {
        span: await reports.spend_by_grant(kf.store.engine, user.id, since)
        for span, since in starts.items()
    }


async def app_names(kf: Keyfob, user: User) -> dict[str, str]:
    return await reports.app_names(kf.store.engine, user.id)


async def dashboard(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        if await kf.store.users.owner() is None:
            return redirect("/setup", 302)
        return login_redirect(request, 302)
    now = time.time()
    days = RANGES.get(request.query_params.get("days", "30"), 30)
    by = "model" if request.query_params.get("by") == "model" else "app"
    names = await app_names(kf, user)
    totals = await span_totals(kf, user, now)
    used = await reports.last_used(kf.store.engine, user.id)
    active: list[dict[str, Any]] = []
    revoked: list[dict[str, Any]] = []
    for grant in await kf.store.grants.list(user.id, include_revoked=True):
        row = _app_row(grant, names, totals, used)
        if grant.active:
            row["limits"] = [limit_view(s, user.timezone) for s in await kf.allowance.limits(grant)]
            active.append(row)
        else:
            revoked.append(row)
    today = datetime.fromtimestamp(now, UTC).astimezone(zone(user.timezone)).date()
    series = await reports.daily_spend(
        kf.store.engine,
        user_id=user.id,
        timezone=user.timezone,
        first_day=today - timedelta(days=days - 1),
        last_day=today,
        by=by,
    )
    grant_names = {g["id"]: g["app_name"] for g in active + revoked}
    refusals = [
        {
            "app": grant_names.get(r.grant_id, names.get(r.client_id, r.client_id)),
            "grant_id": r.grant_id,
            "model": r.model,
            "limit": r.limit_label,
            "needed": r.needed_micro_usd,
            "left": r.left_micro_usd,
            "retry_at": r.retry_at,
            "count": r.count,
            "last_at": r.last_at,
        }
        for r in await kf.store.refusals.recent(user.id, limit=10)
    ]
    providers = await kf.store.providers.list(user.id)
    provider_names = {pr.id: pr.name for pr in providers}
    overruns = [
        {
            "app": grant_names.get(o.grant_id or "", "an app"),
            "provider": provider_names.get(o.provider_id or "", "a provider"),
            "model": o.model,
            "kind": o.kind,
            "reserved": o.reserved_micro_usd,
            "cost": o.cost_micro_usd,
            "limit_tokens": o.output_limit_tokens,
            "output_tokens": o.output_tokens,
            "at": o.created_at,
        }
        for o in await kf.store.overruns.for_user(user.id, unseen_only=True, limit=10)
    ]
    return page(
        request,
        "dashboard.html",
        user=user,
        nav="overview",
        apps=active,
        revoked=revoked,
        wallet=await kf.store.wallets.get(user.id),
        chart=stacked_bars(series, f"Spend per day for the last {days} days, by {by}"),
        legend=legend(series),
        series=series,
        days=days,
        ranges=list(RANGES),
        by=by,
        range_total=series.total(),
        refusals=refusals,
        overruns=overruns,
        has_providers=bool(providers),
        clients=await kf.store.clients.visible_to(user.id),
        tz=user.timezone,
    )


async def overruns_seen(request: Request) -> Response:
    """The person read the overrun notice: lower the flag (the rows stay, and so do the
    providers' marks on the providers page)."""
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    try:
        await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    await kf.store.overruns.mark_seen(user.id)
    flash(request, "Noted. The providers that ignored the limit stay marked on Providers.")
    return redirect("/")


def _app_row(
    grant: Grant,
    names: dict[str, str],
    totals: dict[str, dict[str, int]],
    used: dict[str, float],
) -> dict[str, Any]:
    return {
        "id": grant.id,
        "app_name": names.get(grant.client_id, grant.client_id),
        "models": grant.models,
        "since": grant.created_at,
        "revoked_at": grant.revoked_at,
        "expires_at": grant.expires_at,
        "last_used": used.get(grant.id),
        "spend": {span: totals[span].get(grant.id, 0) for span in SPANS},
    }
