"""The person's pages: setup, login/logout, dashboard, revoke, apps and providers.

Every POST goes through ``forms.read_form`` (size limit, strict decoding, CSRF); every
page is rendered with autoescaping and anti-framing headers (render.py). Provider keys
are never rendered: the dashboard shows names, kinds, URLs and models only.
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts.passwords import WeakPassword
from keyfob.accounts.service import AccountError, authenticate, create_owner
from keyfob.allowance.policy import PolicyError
from keyfob.allowance.service import policy_of
from keyfob.money import format_usd, parse_usd
from keyfob.oauth.clients import InvalidClient, register_app
from keyfob.oauth.consent import WINDOWS, primary_limit, with_primary
from keyfob.oauth.rfc8414 import METADATA_PATH
from keyfob.store.records import Grant, User
from keyfob.web.forms import FormError, read_form
from keyfob.web.openrouter import ROUTES as OPENROUTER_ROUTES
from keyfob.web.ratelimit import LoginThrottle
from keyfob.web.render import (
    current_user,
    error_page,
    kf_of,
    login_redirect,
    page,
    redirect,
    safe_next,
)

log = logging.getLogger("keyfob.web")


def _throttle(request: Request) -> LoginThrottle:
    """The app's login throttle (one per application, so each server counts its own)."""
    found = getattr(request.app.state, "kf_login_throttle", None)
    if not isinstance(found, LoginThrottle):
        found = LoginThrottle()
        request.app.state.kf_login_throttle = found
    return found


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _form_error(request: Request, exc: FormError, user: User | None = None) -> Response:
    return error_page(request, exc.status, "The form could not be accepted", exc.message, user)


def sign_in(request: Request, user: User) -> None:
    """Start a fresh session: nothing from before the login survives (no fixation)."""
    request.session.clear()
    request.session["user_id"] = user.id


# --- first run -----------------------------------------------------------------------


def _setup_token_ok(request: Request, submitted: object) -> bool:
    expected = getattr(request.app.state, "setup_token", None)
    if not isinstance(expected, str) or not isinstance(submitted, str):
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "replace"))


async def setup(request: Request) -> Response:
    """First run: whoever holds the one-time link ``keyfob serve`` printed creates the
    owner. Why a token: the first visitor would otherwise win, and a web page reaching
    127.0.0.1 (DNS rebinding, a local proxy) is a visitor too."""
    kf = kf_of(request)
    if await kf.store.users.owner() is not None:
        return redirect("/login")
    if request.method == "GET" and "token" in request.query_params:
        if not _setup_token_ok(request, request.query_params["token"]):
            return _setup_refused(request)
        # Kept in the session so the token leaves the address bar (and history) at once.
        request.session["setup_token"] = request.query_params["token"]
        return redirect("/setup")
    if not _setup_token_ok(request, request.session.get("setup_token")):
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
    else:
        try:
            user = await create_owner(kf.store, username, password, timezone or "UTC")
        except (AccountError, WeakPassword) as exc:
            error = str(exc)
        else:
            sign_in(request, user)
            return redirect("/")
    return page(request, "setup.html", 400, username=username, timezone=timezone, error=error)


def _setup_refused(request: Request) -> Response:
    return error_page(
        request,
        403,
        "Setup needs its link",
        "Open the setup link that keyfob serve printed in its terminal "
        "(or create the owner with keyfob init).",
    )


# --- login / logout ------------------------------------------------------------------


async def login(request: Request) -> Response:
    kf = kf_of(request)
    next_url = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        if await kf.store.users.owner() is None:
            return redirect("/setup")
        return page(request, "login.html", next=next_url, username="", error=None)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc)
    username = form.get("username").strip()[:64]
    password = form.get("password")
    next_url = safe_next(form.get("next"))
    address = _address(request)
    throttle = _throttle(request)
    wait = throttle.retry_after(username, address)
    if wait > 0:
        response = page(
            request,
            "login.html",
            429,
            next=next_url,
            username=username,
            error=f"Too many failed attempts; try again in {int(wait) + 1} s.",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    user = await authenticate(kf.store, username, password)
    if user is None:
        throttle.failed(username, address)
        log.info("failed login for a username from %s", address)
        return page(
            request,
            "login.html",
            401,
            next=next_url,
            username=username,
            error="Wrong username or password.",
        )
    throttle.succeeded(username, address)
    sign_in(request, user)
    return redirect(next_url)


async def logout(request: Request) -> Response:
    try:
        await read_form(request, kf_of(request).settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc)
    request.session.clear()
    return redirect("/login")


# --- dashboard -----------------------------------------------------------------------


async def dashboard(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        if await kf.store.users.owner() is None:
            return redirect("/setup", 302)
        return login_redirect(request, 302)
    clients = {c.id: c for c in await kf.store.clients.list()}
    rows = []
    for grant in await kf.store.grants.list(user.id):
        _, state = await kf.allowance.remaining(grant)
        client = clients.get(grant.client_id)
        rows.append(
            {
                "id": grant.id,
                "app_name": client.name if client else grant.client_id,
                "models": grant.models,
                "cap": format_usd(grant.cap_micro_usd),
                "window": _window_of(grant),
                "spent": format_usd(state.spent_micro_usd + state.reserved_micro_usd),
                "left": format_usd(state.left_micro_usd),
            }
        )
    providers = [
        {
            "name": p.name,
            "kind": p.kind,
            "base_url": p.base_url,
            "models": p.models,
            "is_local": p.is_local,
        }
        for p in await kf.store.providers.list(user.id)
    ]
    return page(
        request,
        "dashboard.html",
        user=user,
        grants=rows,
        providers=providers,
        clients=list(clients.values()) if user.is_owner else None,
    )


def _window_of(grant: Grant) -> str:
    current = primary_limit(policy_of(grant), grant.window)
    return current.period if current else grant.window


async def edit_grant(request: Request) -> Response:
    """A person's own grant: cap, window and models. Other policy fields are kept."""
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    grant = await kf.store.grants.get(request.path_params["grant_id"][:64])
    if grant is None or grant.user_id != user.id or not grant.active:
        return error_page(request, 404, "Not found", "There is no such grant.", user)
    client = await kf.store.clients.get(grant.client_id)
    providers = await kf.store.providers.list(user.id)
    available = [f"{p.name}/{m}" for p in providers for m in p.models]
    policy = policy_of(grant)
    current = primary_limit(policy, grant.window)

    def show(status: int, checked: list[str], cap: str, window: str, error: str | None) -> Response:
        return page(
            request,
            "grant_edit.html",
            status,
            user=user,
            grant_id=grant.id,
            app_name=client.name if client else grant.client_id,
            models=available,
            checked=checked,
            cap_usd=cap,
            window=window,
            windows=WINDOWS,
            error=error,
        )

    if request.method == "GET":
        cap = format_usd(current.cap_micro_usd if current else grant.cap_micro_usd)
        return show(
            200,
            list(grant.models),
            cap.rstrip("0").rstrip("."),
            current.period if current else grant.window,
            None,
        )
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc, user)
    chosen = list(dict.fromkeys(form.all("models")))
    cap_text, window = form.get("cap_usd").strip(), form.get("window")
    try:
        if any(m not in available for m in chosen):
            raise ValueError("choose models from the list")
        new_policy = with_primary(policy, parse_usd(cap_text), window, grant.window)
    except (ValueError, PolicyError) as exc:
        again = [m for m in chosen if m in available]
        return show(400, again, cap_text, window if window in WINDOWS else "month", str(exc))
    await kf.store.grants.set_policy(
        grant.id,
        policy_json=new_policy.to_json(),
        cap_micro_usd=parse_usd(cap_text),
        models=chosen,
        window=window,
    )
    return redirect("/")


async def revoke_grant(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return redirect("/login")
    try:
        await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc, user)
    grant = await kf.store.grants.get(request.path_params["grant_id"][:64])
    if grant is None or grant.user_id != user.id:
        return error_page(request, 404, "Not found", "There is no such grant.", user)
    await kf.store.grants.revoke(grant.id)
    return redirect("/")


# --- apps ----------------------------------------------------------------------------


async def new_app(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    if not user.is_owner:
        return error_page(request, 403, "Not allowed", "Only the owner registers apps.", user)
    if request.method == "GET":
        return page(
            request,
            "app_new.html",
            user=user,
            name="",
            redirect_uris="",
            client_type="public",
            error=None,
        )
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc, user)
    name, uris = form.get("name"), form.get("redirect_uris")
    client_type = "confidential" if form.get("client_type") == "confidential" else "public"
    try:
        client, secret = await register_app(
            kf.store, name=name, redirect_uris=uris.splitlines(), public=client_type == "public"
        )
    except InvalidClient as exc:
        return page(
            request,
            "app_new.html",
            400,
            user=user,
            name=name,
            redirect_uris=uris,
            client_type=client_type,
            error=str(exc),
        )
    return page(
        request,
        "app_created.html",
        user=user,
        client=client,
        secret=secret,
        metadata_url=kf.settings.issuer + METADATA_PATH,
    )


# --- providers -----------------------------------------------------------------------


async def new_provider(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    if request.method == "GET":
        return page(
            request,
            "provider_new.html",
            user=user,
            name="",
            base_url="",
            models="",
            is_local=False,
            error=None,
        )
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return _form_error(request, exc, user)
    name, base_url = form.get("name").strip(), form.get("base_url").strip()
    models_text, is_local = form.get("models"), form.get("is_local") == "1"
    api_key = form.get("api_key").strip() or None
    models = [m.strip() for m in models_text.split(",") if m.strip()]

    def again(status: int, error: str) -> Response:
        # the key is never sent back, not even into the form it came from
        return page(
            request,
            "provider_new.html",
            status,
            user=user,
            name=name,
            base_url=base_url,
            models=models_text,
            is_local=is_local,
            error=error,
        )

    try:
        from keyfob.providers.linking import LinkRefused, link_provider
    except ImportError:
        return again(503, "Linking providers is not available in this build.")
    try:
        await link_provider(
            kf,
            user_id=user.id,
            name=name,
            kind="openai_compatible",
            base_url=base_url,
            api_key=api_key,
            models=models,
            is_local=is_local,
        )
    except LinkRefused as exc:
        return again(400, str(exc))
    except ValueError as exc:
        return again(400, str(exc))
    return redirect("/")


ROUTES: list[BaseRoute] = [
    Route("/", dashboard, methods=["GET"]),
    Route("/setup", setup, methods=["GET", "POST"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/grants/{grant_id}/revoke", revoke_grant, methods=["POST"]),
    Route("/grants/{grant_id}/edit", edit_grant, methods=["GET", "POST"]),
    Route("/apps/new", new_app, methods=["GET", "POST"]),
    Route("/providers/new", new_provider, methods=["GET", "POST"]),
    *OPENROUTER_ROUTES,
]
