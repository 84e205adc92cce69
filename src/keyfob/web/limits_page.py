"""Editing everything a person allows an app: models, every spending limit (calendar and
rolling windows, per-model caps), rates, the per-call ceiling, the wallet, what happens at
a limit, how long answers fit what is left, when access ends, the webhook. Each error is
shown by its field.

A policy field the form did not send is kept as it is (an older form, or a script that
posts only the cap): only what the person could see is changed.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.allowance.policy import (
    MAX_WAIT_S,
    OUTPUT_LIMIT_MODES,
    Policy,
    PolicyError,
    SpendLimit,
    parse_duration,
)
from keyfob.allowance.service import policy_of
from keyfob.money import parse_usd, usd_input
from keyfob.oauth.consent import (
    EXPIRY_CHOICES,
    KEEP_EXPIRY,
    WINDOWS,
    chosen_expiry,
)
from keyfob.oauth.grants import token_ttls_s
from keyfob.store.apps import Unchanged
from keyfob.store.records import Grant
from keyfob.web.app_pages import owned_grant
from keyfob.web.consent_view import model_choices
from keyfob.web.forms import Form, FormError, read_form
from keyfob.web.render import error_page, flash, kf_of, page, redirect

PERIODS = ("day", "week", "month", "rolling")
BLANK_ROWS = 2
MAX_ROWS = 20
ON_EXHAUSTED = ("block", "wait", "downgrade")


def _span_text(seconds: int | None) -> str:
    if not seconds:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rows(limits: list[SpendLimit]) -> list[dict[str, str]]:
    rows = [
        {
            "period": lim.period,
            "span": _span_text(lim.seconds),
            "cap": usd_input(lim.cap_micro_usd),
            "model": lim.model or "",
        }
        for lim in limits
    ]
    rows += [{"period": "", "span": "", "cap": "", "model": ""} for _ in range(BLANK_ROWS)]
    return rows


def _values(policy: Policy, grant: Grant) -> dict[str, Any]:
    """What the form shows for a stored policy."""
    primary = policy.primary_limit(grant.window)
    others = [lim for lim in policy.limits if lim is not primary]
    ceiling = policy.per_call_ceiling_micro_usd
    return {
        "checked": list(grant.models),
        "cap_usd": usd_input(primary.cap_micro_usd if primary else grant.cap_micro_usd),
        "window": primary.period if primary else grant.window,
        "rows": _rows(others),
        "rpm": "" if policy.requests_per_minute is None else str(policy.requests_per_minute),
        "tpm": "" if policy.tokens_per_minute is None else str(policy.tokens_per_minute),
        "ceiling": "" if ceiling is None else usd_input(ceiling),
        "on_exhausted": policy.on_exhausted,
        "wait_max_s": str(int(policy.wait_max_s)),
        "fallback_model": policy.fallback_model or "",
        "use_wallet": policy.use_wallet,
        "webhook_url": policy.webhook_url or "",
        "output_limit": policy.output_limit,
        "fit_floor": str(policy.fit_floor_tokens),
        "expires": KEEP_EXPIRY,
        "expires_at": grant.expires_at,
        "expiry_choices": EXPIRY_CHOICES,
    }


def _optional_int(text: str, field: str, errors: dict[str, str], what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 12:
        errors[field] = f"{what} is a whole number (or empty for no limit)"
        return None
    return int(text)


def _parse(
    form: Form, policy: Policy, grant: Grant, available: list[str]
) -> tuple[dict[str, Any], Policy | None, dict[str, str]]:
    """The form's values (to show again), the new policy (None on errors), the errors."""
    f = form.fields
    errors: dict[str, str] = {}
    shown = _values(policy, grant)
    chosen = list(dict.fromkeys(form.all("models")))
    shown["checked"] = [m for m in chosen if m in available]
    if any(m not in available for m in chosen):
        errors["models"] = "choose models from the list"
    elif not chosen:
        errors["models"] = "choose at least one model: with none, the app can make no call"
    cap_text, window = form.get("cap_usd").strip(), form.get("window")
    shown["cap_usd"], shown["window"] = cap_text, window if window in WINDOWS else "month"
    cap = 0
    try:
        cap = parse_usd(cap_text)
    except ValueError:
        errors["cap_usd"] = "enter an amount in US dollars, such as 5 or 2.50"
    else:
        if cap == 0:
            errors["cap_usd"] = (
                "a cap of $0 refuses every call; enter an amount, or revoke the app instead"
            )
    if window not in WINDOWS:
        errors["window"] = "choose a day, a week or a month"
    new = policy
    if not errors:
        new = policy.with_changes(SpendLimit(window, cap), old_window=grant.window)
    if "limit_rows" in f:
        limits, rows = _parse_limits(form, new.primary_limit(window), errors)
        shown["rows"] = rows
        if limits is not None:
            new = new.with_changes(limits=limits)
    changes: dict[str, Any] = {}
    if "rpm" in f:
        shown["rpm"] = form.get("rpm").strip()
        changes["requests_per_minute"] = _optional_int(
            form.get("rpm"), "rpm", errors, "Requests per minute"
        )
    if "tpm" in f:
        shown["tpm"] = form.get("tpm").strip()
        changes["tokens_per_minute"] = _optional_int(
            form.get("tpm"), "tpm", errors, "Tokens per minute"
        )
    if "ceiling" in f:
        shown["ceiling"] = text = form.get("ceiling").strip()
        try:
            changes["per_call_ceiling_micro_usd"] = parse_usd(text) if text else None
        except ValueError:
            errors["ceiling"] = "enter an amount in US dollars, or leave it empty for none"
    if "on_exhausted" in f:
        shown["on_exhausted"] = mode = form.get("on_exhausted")
        shown["wait_max_s"] = wait = form.get("wait_max_s", "30").strip()
        shown["fallback_model"] = fallback = form.get("fallback_model").strip()
        if mode not in ON_EXHAUSTED:
            errors["on_exhausted"] = "choose what happens at a limit"
        changes["on_exhausted"] = mode
        if not wait.isdigit() or int(wait) > MAX_WAIT_S:
            errors["wait_max_s"] = f"wait 0 to {MAX_WAIT_S:.0f} seconds"
        else:
            changes["wait_max_s"] = float(wait)
        if fallback and fallback not in available:
            errors["fallback_model"] = "choose a model from the list"
        elif mode == "downgrade" and not fallback:
            errors["fallback_model"] = "choose the model to serve instead"
        changes["fallback_model"] = fallback or None
    if "wallet_shown" in f:
        shown["use_wallet"] = changes["use_wallet"] = form.get("use_wallet") == "1"
    if "output_limit" in f:
        shown["output_limit"] = mode = form.get("output_limit")
        shown["fit_floor"] = floor = form.get("fit_floor", "256").strip()
        if mode not in OUTPUT_LIMIT_MODES:
            errors["output_limit"] = "choose how a long answer is limited"
        changes["output_limit"] = mode
        if not floor.isdigit() or not 1 <= int(floor[:8]) <= 1_000_000:
            errors["fit_floor"] = "the smallest answer is 1 to 1,000,000 tokens"
        else:
            changes["fit_floor_tokens"] = int(floor)
    if "expires" in f:
        shown["expires"] = form.get("expires").strip()
        if isinstance(chosen_expiry(shown["expires"], time.time()), str):
            errors["expires"] = "choose when access ends from the list"
    if "webhook_url" in f:
        shown["webhook_url"] = url = form.get("webhook_url").strip()
        if url and (not url.startswith(("https://", "http://")) or len(url) > 2000):
            errors["webhook_url"] = "a webhook is an https:// address (or empty for none)"
        changes["webhook_url"] = url or None
    if errors:
        return shown, None, errors
    try:
        new = new.with_changes(**changes)
    except PolicyError as exc:
        return shown, None, {"policy": str(exc)}
    return shown, new, errors


def _parse_limits(
    form: Form, primary: SpendLimit | None, errors: dict[str, str]
) -> tuple[tuple[SpendLimit, ...] | None, list[dict[str, str]]]:
    """The primary limit plus the rows of other limits."""
    try:
        count = min(MAX_ROWS, int(form.get("limit_rows", "0")))
    except ValueError:
        count = 0
    kept: list[SpendLimit] = [primary] if primary else []
    rows: list[dict[str, str]] = []
    bad = False
    for i in range(count):
        row = {
            "period": form.get(f"lim_period_{i}"),
            "span": form.get(f"lim_span_{i}").strip(),
            "cap": form.get(f"lim_cap_{i}").strip(),
            "model": form.get(f"lim_model_{i}").strip(),
        }
        if form.get(f"lim_remove_{i}") == "1" or (not row["period"] and not row["cap"]):
            continue
        rows.append(row)
        n = len(rows) - 1
        try:
            if row["period"] not in PERIODS:
                raise PolicyError("choose a window")
            seconds = parse_duration(row["span"]) if row["period"] == "rolling" else None
            limit = SpendLimit(row["period"], parse_usd(row["cap"]), seconds, row["model"] or None)
        except (PolicyError, ValueError) as exc:
            message = str(exc)
            if "USD" in message or "amount" in message:
                message = "enter an amount in US dollars"
            errors[f"lim_{n}"] = message
            bad = True
            continue
        if any(
            lim.period == limit.period and lim.seconds == limit.seconds and lim.model == limit.model
            for lim in kept
        ):
            errors[f"lim_{n}"] = "this window is already limited above"
            bad = True
            continue
        kept.append(limit)
    rows += [{"period": "", "span": "", "cap": "", "model": ""} for _ in range(BLANK_ROWS)]
    return (None if bad else tuple(kept)), rows


async def edit_grant(request: Request) -> Response:
    found = await owned_grant(request)
    if isinstance(found, Response):
        return found
    user, grant = found
    kf = kf_of(request)
    if not grant.active:
        return error_page(
            request,
            404,
            "This app was revoked",
            "A revoked app has no limits to edit.",
            user,
            next_step="If you want it back, start signing in from the app again.",
        )
    client = await kf.store.clients.get(grant.client_id)
    # only models Keyfob can price (and so meter), as on the consent page
    available = [c.id for c in await model_choices(kf, user.id) if c.priced]
    policy = policy_of(grant)

    def show(status: int, values: dict[str, Any], errors: dict[str, str]) -> Response:
        return page(
            request,
            "grant_edit.html",
            status,
            user=user,
            nav="overview",
            grant_id=grant.id,
            app_name=client.name if client else grant.client_id,
            models=available,
            windows=WINDOWS,
            periods=PERIODS,
            modes=ON_EXHAUSTED,
            errors=errors,
            error="Some fields need a change; see the notes by them." if errors else None,
            **values,
        )

    if request.method == "GET":
        return show(200, _values(policy, grant), {})
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    values, new, errors = _parse(form, policy, grant, available)
    if new is None:
        return show(400, values, errors)
    primary = new.primary_limit(values["window"])
    await kf.store.grants.set_policy(
        grant.id,
        policy_json=new.to_json(),
        cap_micro_usd=primary.cap_micro_usd if primary else 0,
        models=values["checked"],
        window=values["window"],
    )
    ends = chosen_expiry(values["expires"], time.time())
    if not isinstance(ends, Unchanged | str):
        # also cuts the live tokens to the new end, so every endpoint refuses it on time
        await kf.store.grants.set_expiry(grant.id, ends, token_ttls_s=token_ttls_s(kf.settings))
    flash(request, f"Saved the limits of {client.name if client else 'the app'}.")
    return redirect(f"/grants/{grant.id}")


ROUTES: list[BaseRoute] = [
    Route("/grants/{grant_id}/edit", edit_grant, methods=["GET", "POST"]),
]
