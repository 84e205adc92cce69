"""The wallet (balance, history, top-up, monthly refill) and the person's settings
(password, time zone, default cap for consent, log out everywhere)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts import service as account_service
from keyfob.accounts.hashing import HashingBusy
from keyfob.accounts.passwords import WeakPassword
from keyfob.allowance.windows import zone
from keyfob.money import parse_usd, usd_input, usd_summary
from keyfob.store import reports
from keyfob.store.records import User
from keyfob.web import limit_backends
from keyfob.web.consent_view import DEFAULT_CAP_USD
from keyfob.web.forms import Form, FormError, read_form
from keyfob.web.render import (
    current_user,
    error_page,
    flash,
    kf_of,
    login_redirect,
    page,
    redirect,
)
from keyfob.web.sessions import hash_limiter, sign_in, sign_out_everywhere

HISTORY_ROWS = 200


async def _signed_in_form(request: Request) -> tuple[User, Form] | Response:
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    try:
        form = await read_form(request, kf_of(request).settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    return user, form


async def wallet_page(
    request: Request, status: int = 200, errors: dict[str, str] | None = None
) -> Response:
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    kf = kf_of(request)
    wallet = await kf.store.wallets.get(user.id)
    apps = []
    names = await reports.app_names(kf.store.engine, user.id)
    from keyfob.allowance.service import policy_of

    for g in await kf.store.grants.list(user.id):
        if policy_of(g).use_wallet:
            apps.append({"id": g.id, "name": names.get(g.client_id, g.client_id)})
    return page(
        request,
        "wallet.html",
        status,
        user=user,
        nav="wallet",
        wallet=wallet,
        history=await kf.store.wallets.history(user.id, limit=HISTORY_ROWS),
        apps=apps,
        tz=user.timezone,
        errors=errors or {},
        refill_text=usd_input(wallet.monthly_refill_micro_usd)
        if wallet.monthly_refill_micro_usd is not None
        else "",
    )


async def wallet(request: Request) -> Response:
    return await wallet_page(request)


async def top_up(request: Request) -> Response:
    found = await _signed_in_form(request)
    if isinstance(found, Response):
        return found
    user, form = found
    try:
        amount = parse_usd(form.get("amount"))
        if amount <= 0:
            raise ValueError("zero")
    except ValueError:
        return await wallet_page(
            request, 400, {"amount": "enter a positive amount in US dollars, such as 10"}
        )
    note = form.get("note").strip()[:200] or None
    w = await kf_of(request).store.wallets.top_up(user.id, amount, note)
    flash(
        request,
        f"Added {usd_summary(amount)}; the balance is {usd_summary(w.balance_micro_usd)}.",
    )
    return redirect("/wallet")


async def refill(request: Request) -> Response:
    found = await _signed_in_form(request)
    if isinstance(found, Response):
        return found
    user, form = found
    text = form.get("refill").strip()
    amount: int | None = None
    if text:
        try:
            amount = parse_usd(text)
        except ValueError:
            return await wallet_page(
                request,
                400,
                {"refill": "enter an amount in US dollars, or leave it empty for no refill"},
            )
    await kf_of(request).store.wallets.set_monthly_refill(user.id, amount)
    flash(
        request,
        f"The wallet is topped up to {usd_summary(amount)} on the first of each month."
        if amount is not None
        else "Monthly refill turned off.",
    )
    return redirect("/wallet")


async def settings_page(
    request: Request, status: int = 200, errors: dict[str, str] | None = None
) -> Response:
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    return page(
        request,
        "settings.html",
        status,
        user=user,
        nav="settings",
        errors=errors or {},
        timezone=user.timezone,
        default_cap=usd_input(user.default_cap_micro_usd)
        if user.default_cap_micro_usd is not None
        else "",
        builtin_default=DEFAULT_CAP_USD,
    )


async def settings(request: Request) -> Response:
    return await settings_page(request)


async def preferences(request: Request) -> Response:
    found = await _signed_in_form(request)
    if isinstance(found, Response):
        return found
    user, form = found
    tz = form.get("timezone").strip()
    cap_text = form.get("default_cap").strip()
    errors: dict[str, str] = {}
    if not tz or len(tz) > 64 or zone(tz).key != tz:
        errors["timezone"] = "enter a time zone such as Europe/Paris or America/New_York"
    cap: int | None = None
    if cap_text:
        try:
            cap = parse_usd(cap_text)
            if cap == 0:
                errors["default_cap"] = "a cap of $0 would refuse every call; enter an amount"
        except ValueError:
            errors["default_cap"] = "enter an amount in US dollars, or leave it empty"
    if errors:
        return await settings_page(request, 400, errors)
    await kf_of(request).store.users.set_preferences(
        user.id, timezone=tz, default_cap_micro_usd=cap
    )
    flash(request, "Saved. New apps you allow use this time zone for their calendar windows.")
    return redirect("/settings")


async def change_password(request: Request) -> Response:
    """Ends every session of the person (``accounts.service.change_password``) and signs
    this browser in again with a new session id. A wrong current password counts as a
    failed login (same throttle), so a stolen session cannot be used to guess it."""
    found = await _signed_in_form(request)
    if isinstance(found, Response):
        return found
    user, form = found
    current, new = form.get("current_password"), form.get("new_password")
    errors: dict[str, str] = {}
    throttle = limit_backends.throttle(request, "login")
    address = request.client.host if request.client else "unknown"
    wait = await throttle.retry_after(user.username, address)
    if wait > 0:
        errors["current_password"] = f"too many wrong passwords; wait {int(wait) + 1} s"
        response = await settings_page(request, 429, errors)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if new != form.get("new_password_confirm"):
        errors["new_password_confirm"] = "the two new passwords differ"  # noqa: S105
    else:
        kf = kf_of(request)
        try:
            await account_service.change_password(
                kf.store, user, current, new, hash_limiter(request)
            )
        except WeakPassword as exc:
            errors["new_password"] = str(exc)
        except HashingBusy:
            errors["current_password"] = "too many sign-ins at once; try again"  # noqa: S105
        except account_service.AccountError as exc:
            if "current password" in str(exc):
                await throttle.failed(user.username, address)
                errors["current_password"] = "this is not your current password"  # noqa: S105
            else:
                errors["new_password"] = str(exc)
    if errors:
        return await settings_page(request, 400, errors)
    await throttle.succeeded(user.username, address)
    # every session ended, this one too: whoever knew the old password is out, and this
    # browser continues under a new id
    await sign_in(request, await kf_of(request).store.users.get(user.id) or user)
    flash(request, "Password changed; every other session was logged out.")
    return redirect("/settings")


async def logout_everywhere(request: Request) -> Response:
    found = await _signed_in_form(request)
    if isinstance(found, Response):
        return found
    user, _form = found
    await sign_out_everywhere(request, user)
    return redirect("/login?out=everywhere")


ROUTES: list[BaseRoute] = [
    Route("/wallet", wallet, methods=["GET"]),
    Route("/wallet/topup", top_up, methods=["POST"]),
    Route("/wallet/refill", refill, methods=["POST"]),
    Route("/settings", settings, methods=["GET"]),
    Route("/settings/preferences", preferences, methods=["POST"]),
    Route("/settings/password", change_password, methods=["POST"]),
    Route("/settings/logout-everywhere", logout_everywhere, methods=["POST"]),
]
