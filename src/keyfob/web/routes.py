"""The person's pages: first-run setup, login and logout here, and every page group's
routes assembled from its own module (overview, an app's page and limits, providers,
wallet and settings, app registration, error pages).

Every POST goes through ``forms.read_form`` (size limit, strict decoding, CSRF); every
page is rendered with autoescaping and anti-framing headers (render.py). Provider keys
are never rendered.
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts.hashing import HashingBusy
from keyfob.accounts.passwords import WeakPassword
from keyfob.accounts.service import AccountError, authenticate, create_owner
from keyfob.store.records import User
from keyfob.web.account_pages import ROUTES as ACCOUNT_ROUTES
from keyfob.web.admin_people import ROUTES as ADMIN_PEOPLE_ROUTES
from keyfob.web.admin_site import ROUTES as ADMIN_SITE_ROUTES
from keyfob.web.app_pages import ROUTES as APP_ROUTES
from keyfob.web.errors import ROUTES as ERROR_ROUTES
from keyfob.web.forms import FormError, read_form
from keyfob.web.limit_backends import ThrottleBackend, throttle
from keyfob.web.limits_page import ROUTES as LIMITS_ROUTES
from keyfob.web.openrouter import ROUTES as OPENROUTER_ROUTES
from keyfob.web.overview import dashboard, overruns_seen
from keyfob.web.people_pages import ROUTES as PEOPLE_ROUTES
from keyfob.web.provider_pages import ROUTES as PROVIDER_ROUTES
from keyfob.web.register_page import ROUTES as REGISTER_ROUTES
from keyfob.web.render import (
    error_page,
    flash,
    kf_of,
    page,
    redirect,
    safe_next,
)
from keyfob.web.sessions import hash_limiter, sign_in, sign_out

log = logging.getLogger("keyfob.web")


def _throttle(request: Request) -> ThrottleBackend:
    """The app's login throttle (shared with the password change; in Redis when the
    deployment has it, so every process counts the same failures)."""
    return throttle(request, "login")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _form_error(request: Request, exc: FormError, user: User | None = None) -> Response:
    return error_page(request, exc.status, "The form could not be accepted", exc.message, user)


# --- first run -----------------------------------------------------------------------


async def _setup_token_ok(request: Request, submitted: object) -> bool:
    """Personal mode: the token this process printed. Hosted mode: a one-time token in
    the database (``keyfob setup-link``), valid on every process behind the balancer."""
    if not isinstance(submitted, str) or len(submitted) > 256:
        return False
    kf = kf_of(request)
    if kf.settings.mode == "hosted":
        return await kf.store.setup_tokens.valid(submitted)
    expected = getattr(request.app.state, "setup_token", None)
    if not isinstance(expected, str):
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "replace"))


async def setup(request: Request) -> Response:
    """First run: whoever holds the one-time link ``keyfob serve`` printed creates the
    owner. Why a token: the first visitor would otherwise win, and a web page reaching
    127.0.0.1 (DNS rebinding, a local proxy) is a visitor too."""
    kf = kf_of(request)
    # Closed for good once anyone runs this Keyfob (the owner, or an admin the CLI added
    # on a hosted database: `keyfob users add NAME --admin`).
    if await kf.store.users.owner() is not None or await kf.store.users.active_admins():
        return redirect("/login")
    if request.method == "GET" and "token" in request.query_params:
        if not await _setup_token_ok(request, request.query_params["token"]):
            return _setup_refused(request)
        # Kept in the session so the token leaves the address bar (and history) at once.
        request.session["setup_token"] = request.query_params["token"]
        return redirect("/setup")
    if not await _setup_token_ok(request, request.session.get("setup_token")):
        return _setup_refused(request)
    if request.method == "GET":
        return page(request, "setup.html", username="", timezone="UTC", error=None)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc)
    username, timezone = form.get("username").strip(), form.get("timezone", "UTC").strip()
    password = form.get("password")
    error = None
    if password != form.get("password_confirm"):
        error = "the two passwords differ"
    elif kf.settings.mode == "hosted" and not await kf.store.setup_tokens.use(
        str(request.session.get("setup_token"))
    ):
        return _setup_refused(request)  # used by another request meanwhile
    else:
        try:
            user = await create_owner(
                kf.store, username, password, timezone or "UTC", hash_limiter(request)
            )
        except (AccountError, WeakPassword) as exc:
            error = str(exc)
            if kf.settings.mode == "hosted":  # the link stays good for a second try
                await kf.store.setup_tokens.release(str(request.session.get("setup_token")))
        else:
            await sign_in(request, user)
            return redirect("/")
    return page(request, "setup.html", 400, username=username, timezone=timezone, error=error)


def _setup_refused(request: Request) -> Response:
    return error_page(
        request,
        403,
        "Setup needs its link",
        "Open the setup link that keyfob serve printed in its terminal, or make one with "
        "keyfob setup-link (or create the owner with keyfob init).",
    )


# --- login / logout ------------------------------------------------------------------


async def login(request: Request) -> Response:
    kf = kf_of(request)
    next_url = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        if await kf.store.users.owner() is None:
            return redirect("/setup")
        return _login_page(request, next=next_url, username="", error=None)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc)
    username = form.get("username").strip()[:64]
    password = form.get("password")
    next_url = safe_next(form.get("next"))
    address = _address(request)
    throttle = _throttle(request)
    wait = await throttle.retry_after(username, address)
    if wait > 0:
        response = _login_page(
            request,
            429,
            next=next_url,
            username=username,
            error=f"Too many failed attempts; try again in {int(wait) + 1} s.",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        user = await authenticate(kf.store, username, password, hash_limiter(request))
    except HashingBusy:
        response = _login_page(
            request,
            503,
            next=next_url,
            username=username,
            error="Too many sign-ins at once; try again in a moment.",
        )
        response.headers["Retry-After"] = "1"
        return response
    if user is None:
        await throttle.failed(username, address)
        log.info("failed login for a username from %s", address)
        return _login_page(
            request, 401, next=next_url, username=username, error="Wrong username or password."
        )
    await throttle.succeeded(username, address)
    if not user.active:  # told only to whoever knows the password
        return _login_page(
            request,
            403,
            next=next_url,
            username=username,
            error="This account is disabled. Ask an admin of this Keyfob.",
        )
    await sign_in(request, user)
    return redirect(next_url)


def _login_page(request: Request, status: int = 200, **context: object) -> Response:
    from keyfob.accounts.people import effective_signup

    s = kf_of(request).settings
    return page(request, "login.html", status, signup=effective_signup(s.mode, s.signup), **context)


async def logout(request: Request) -> Response:
    try:
        await read_form(request, kf_of(request).settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc)
    await sign_out(request)
    flash(request, "You are logged out.")
    return redirect("/login")


ROUTES: list[BaseRoute] = [
    Route("/", dashboard, methods=["GET"]),
    Route("/overruns/seen", overruns_seen, methods=["POST"]),
    Route("/setup", setup, methods=["GET", "POST"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    *REGISTER_ROUTES,
    *OPENROUTER_ROUTES,
    *PROVIDER_ROUTES,
    *APP_ROUTES,
    *LIMITS_ROUTES,
    *ACCOUNT_ROUTES,
    *PEOPLE_ROUTES,
    *ADMIN_PEOPLE_ROUTES,
    *ADMIN_SITE_ROUTES,
    *ERROR_ROUTES,
]
