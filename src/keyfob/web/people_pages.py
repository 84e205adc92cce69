"""Pages for people who are not signed in yet: signing up (as the signup mode allows)
and setting a password through a one-time link an admin gave them.

Codes arrive in the address (``/signup?code=...``, ``/password?code=...``) because they
travel as links; each page moves its code into the session at once and redirects, so it
leaves the address bar and history (as ``/setup`` does with its token). Signups are
limited per address; a wrong invite code counts as a failed login does.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts.hashing import HashingBusy
from keyfob.accounts.passwords import WeakPassword
from keyfob.accounts.people import (
    AccountError,
    CodeRefused,
    effective_signup,
    link_holder,
    set_password_by_link,
    sign_up,
)
from keyfob.allowance.windows import zone
from keyfob.web import limit_backends
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import error_page, flash, kf_of, page, redirect
from keyfob.web.sessions import hash_limiter, sign_in

#: Accounts one address may create per hour (in memory, per process; a hosted
#: deployment also limits at its proxy).
SIGNUPS_PER_HOUR = 10
_INVITE_KEY = "signup_code"
_LINK_KEY = "password_code"
DIFFER = "the two passwords differ"
BUSY = "too many sign-ins at once; try again in a moment"


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _signup_page(
    request: Request,
    mode: str,
    status: int = 200,
    errors: dict[str, str] | None = None,
    **values: str,
) -> Response:
    fields = {"username": "", "timezone": "UTC", "invite_code": "", **values}
    return page(request, "signup.html", status, mode=mode, errors=errors or {}, **fields)


async def signup(request: Request) -> Response:
    kf = kf_of(request)
    mode = effective_signup(kf.settings.mode, kf.settings.signup)
    if mode == "closed":
        status = 200 if request.method == "GET" else 403
        return _signup_page(request, mode, status)
    if request.method == "GET":
        if "code" in request.query_params:
            request.session[_INVITE_KEY] = request.query_params["code"][:128]
            return redirect("/signup")
        code = request.session.get(_INVITE_KEY)
        return _signup_page(request, mode, invite_code=code if isinstance(code, str) else "")
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message)
    username = form.get("username").strip()[:64]
    timezone = form.get("timezone", "UTC").strip()[:64] or "UTC"
    code = form.get("invite_code").strip()[:128] if mode == "invite" else ""
    values = {"username": username, "timezone": timezone, "invite_code": code}
    address = _address(request)
    # shared by every process when the deployment has Redis (web/limit_backends.py); a
    # signup attempt counts, so a script cannot probe usernames or codes at speed
    throttle = limit_backends.throttle(request, "signup-code")
    wait = await throttle.retry_after("signup-invite-code", address) if mode == "invite" else 0
    signups = limit_backends.window_limiter(request, "signups", SIGNUPS_PER_HOUR, 3600.0)
    if wait > 0 or await signups.hit(address) > 0:
        response = _signup_page(
            request,
            mode,
            429,
            {"form": "Too many sign-ups from your address; try again later."},
            **values,
        )
        response.headers["Retry-After"] = str(int(wait) + 1 if wait > 0 else 3600)
        return response
    errors: dict[str, str] = {}
    password = form.get("password")
    if password != form.get("password_confirm"):
        errors["password_confirm"] = DIFFER
    if zone(timezone).key != timezone:
        errors["timezone"] = f"unknown time zone {timezone!r} (for example Europe/Paris)"
    if not errors:
        try:
            user = await sign_up(
                kf.store, mode, username, password, code, hash_limiter(request), timezone=timezone
            )
        except CodeRefused as exc:
            await throttle.failed("signup-invite-code", address)
            errors["invite_code"] = str(exc)
        except WeakPassword as exc:
            errors["password"] = str(exc)
        except AccountError as exc:
            errors["username"] = str(exc)
        except HashingBusy:
            response = _signup_page(
                request, mode, 503, {"form": "Too many sign-ins at once; try again."}, **values
            )
            response.headers["Retry-After"] = "1"
            return response
        else:
            request.session.pop(_INVITE_KEY, None)
            await sign_in(request, user)
            flash(request, f"Welcome, {user.username}. Link a provider to let apps use it.")
            return redirect("/")
    return _signup_page(request, mode, 400, errors, **values)


def _link_refused(request: Request) -> Response:
    return error_page(
        request,
        400,
        "This link does not work",
        "The link is used, replaced by a newer one, or expired (links last a day).",
        next_step="Ask an admin of this Keyfob for a new link.",
    )


async def password(request: Request) -> Response:
    """Set a password through a one-time link (an admin's reset, or a new account)."""
    kf = kf_of(request)
    if request.method == "GET" and "code" in request.query_params:
        request.session[_LINK_KEY] = request.query_params["code"][:128]
        return redirect("/password")
    code = request.session.get(_LINK_KEY)
    person = await link_holder(kf.store, code) if isinstance(code, str) else None
    if person is None or not isinstance(code, str):
        return _link_refused(request)
    if request.method == "GET":
        return page(request, "password.html", username=person.username, errors={})
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message)
    new = form.get("new_password")
    errors: dict[str, str] = {}
    if new != form.get("new_password_confirm"):
        errors["new_password_confirm"] = DIFFER
    else:
        try:
            user = await set_password_by_link(kf.store, code, new, hash_limiter(request))
        except WeakPassword as exc:
            errors["new_password"] = str(exc)
        except CodeRefused:
            return _link_refused(request)
        except HashingBusy:
            errors["new_password"] = BUSY
        else:
            request.session.pop(_LINK_KEY, None)
            await sign_in(request, user)
            flash(request, "Your password is set; every other session of yours has ended.")
            return redirect("/")
    return page(request, "password.html", 400, username=person.username, errors=errors)


ROUTES: list[BaseRoute] = [
    Route("/signup", signup, methods=["GET", "POST"]),
    Route("/password", password, methods=["GET", "POST"]),
]
