"""HTTP endpoints of the authorization server: metadata, authorize (+ consent), device,
token, revocation, introspection and registration.

This is the only oauth module that knows Starlette. It turns requests into plain data,
calls the protocol modules, and maps ``OAuthError`` to HTTP: at the JSON endpoints an
RFC 6749 error body; at the authorization endpoint an HTML page when the client or
redirect URI is not yet trusted (never a redirect: no open redirector), else a redirect
carrying ``error``, ``state`` and ``iss``.

Between a request and the person's decision, the request is kept in the (signed)
session under a random id and validated again on submit, so a client or redirect URI
removed meanwhile cannot receive a code; the id is only valid in the session that
created it, so consent cannot be fixated onto someone else's browser.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keyfob.allowance.policy import Policy, SpendLimit
from keyfob.allowance.service import policy_of
from keyfob.limits import BodyTooLarge, read_limited
from keyfob.money import parse_usd, usd_input, usd_summary
from keyfob.oauth import (
    client_metadata,
    rfc6749,
    rfc7009,
    rfc7591,
    rfc7662,
    rfc8414,
    rfc8628,
    rfc9728,
)
from keyfob.oauth.consent import (
    KEEP_EXPIRY,
    WINDOWS,
    ConsentAsk,
    chosen_expiry,
    expiry_choices,
)
from keyfob.oauth.errors import OAuthError
from keyfob.oauth.grants import token_ttls_s
from keyfob.oauth.rfc6749 import AuthorizationRequest
from keyfob.oauth.sign_in_words import sign_in_words
from keyfob.store.apps import UNCHANGED, Unchanged
from keyfob.store.records import Grant, User
from keyfob.web import limit_backends
from keyfob.web.consent_view import DEFAULT_CAP_USD, cheapest, model_choices, summary
from keyfob.web.forms import Form, FormError, read_form
from keyfob.web.render import current_user, error_page, kf_of, login_redirect, page, redirect
from keyfob.web.sessions import PENDING_TTL_S

log = logging.getLogger("keyfob.oauth")

PENDING_KEY = "oauth_pending"
PENDING_MAX = 3
PENDING_MAX_CHARS = 2400
MAX_QUERY_BYTES = 8192
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: Discovery documents are public: any page may read them (never with credentials).
PUBLIC_DOCUMENT = {"Cache-Control": "public, max-age=3600", "Access-Control-Allow-Origin": "*"}
DEVICE_CODES_PER_10_MIN = 60
T = TypeVar("T")


def _state_object(request: Request, name: str, factory: type[T], *args: Any) -> T:
    """A per-application object (rate limiters), made on first use."""
    found = getattr(request.app.state, name, None)
    if found is None:
        found = factory(*args)
        setattr(request.app.state, name, found)
    return found  # type: ignore[no-any-return]


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def metadata(request: Request) -> Response:
    return JSONResponse(rfc8414.metadata(kf_of(request).settings), headers=PUBLIC_DOCUMENT)


async def resource_metadata(request: Request) -> Response:
    return JSONResponse(rfc9728.metadata(kf_of(request).settings), headers=PUBLIC_DOCUMENT)


# --- pending requests in the session -------------------------------------------------


def _pending(request: Request) -> dict[str, Any]:
    stored = request.session.get(PENDING_KEY)
    if not isinstance(stored, dict):
        return {}
    now = time.time()
    return {
        k: v
        for k, v in stored.items()
        if isinstance(v, dict) and now - float(v.get("at", 0)) < PENDING_TTL_S
    }


def _remember(request: Request, entry: dict[str, Any]) -> str:
    pending = _pending(request)
    request_id = secrets.token_urlsafe(16)
    pending[request_id] = {"at": time.time(), **entry}
    newest = sorted(pending.items(), key=lambda kv: float(kv[1]["at"]))[-PENDING_MAX:]
    # The session is a cookie (about 4 KB at most in browsers): drop the oldest requests
    # rather than let the browser drop the whole session.
    while len(newest) > 1 and len(json.dumps(dict(newest))) > PENDING_MAX_CHARS:
        newest.pop(0)
    request.session[PENDING_KEY] = dict(newest)
    return request_id


def _forget(request: Request, request_id: str) -> None:
    pending = _pending(request)
    pending.pop(request_id, None)
    request.session[PENDING_KEY] = pending


# --- consent (shared by the browser and the device flow) -----------------------------


async def _available_models(request: Request, user: User) -> list[str]:
    """The models a person may allow: linked and priced (an unpriced one cannot be
    metered, so the consent page shows it disabled, with a link to set its price)."""
    return [c.id for c in await model_choices(kf_of(request), user.id) if c.priced]


def _usd(micro: int) -> str:
    return usd_input(micro)


async def _consent(
    request: Request,
    user: User,
    ask: ConsentAsk,
    request_id: str,
    action: str,
    *,
    status: int = 200,
    error: str | None = None,
    error_field: str | None = None,
    checked: list[str] | None = None,
    cap_usd: str | None = None,
    window: str | None = None,
) -> Response:
    kf = kf_of(request)
    choices = await model_choices(kf, user.id)
    models = [c.id for c in choices if c.priced]
    existing = await kf.store.grants.active_for(user.id, ask.client_id)
    seen = "active" if existing else "new"
    if existing is None and await kf.store.grants.ever_for(user.id, ask.client_id):
        seen = "revoked"
    suggestion = ask.suggestion
    if checked is None:
        if suggestion.models:
            checked = [m for m in suggestion.models if m in models]
        elif existing is not None:
            checked = [m for m in existing.models if m in models]
        else:
            checked = cheapest(choices)  # the safe default: the cheapest model only
    current = policy_of(existing).primary_limit(existing.window) if existing else None
    if cap_usd is None:
        if current is not None:
            cap_usd = _usd(current.cap_micro_usd)
        elif suggestion.cap_micro_usd is not None:
            cap_usd = _usd(suggestion.cap_micro_usd)
        elif user.default_cap_micro_usd is not None:
            cap_usd = _usd(user.default_cap_micro_usd)
        else:
            cap_usd = DEFAULT_CAP_USD
    if window is None:
        window = current.period if current else (suggestion.window or "month")
    try:
        cap_micro: int | None = parse_usd(cap_usd or "0")
    except ValueError:
        cap_micro = None
    ends_choices: list[tuple[str, str]] = [
        (str(s), label) for s, label in expiry_choices(suggestion.expires_in_s)
    ]
    expiry = str(suggestion.expires_in_s or 0)
    if existing is not None and existing.expires_at is not None:
        ends = datetime.fromtimestamp(existing.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        ends_choices.insert(0, (KEEP_EXPIRY, f"keep: ends {ends}"))
        if suggestion.expires_in_s is None:
            expiry = KEEP_EXPIRY
    client = await kf.store.clients.get(ask.client_id)
    return page(
        request,
        "consent.html",
        status,
        user=user,
        hide_nav=True,
        app_name=ask.client_name,
        client_kind=ask.client_kind,
        # An admin vouched for the app (or registered it); who registered it is shown only
        # to that person ("you"): another person's apps are theirs alone.
        verified=client is not None and client.verified,
        registered_by_you=client is not None and client.registered_by == user.id,
        client_host=urlsplit(ask.client_id).netloc
        if ask.client_kind == "metadata_document"
        else None,
        redirect_host=ask.redirect_host,
        seen=seen,
        suggested_cap=(
            usd_summary(suggestion.cap_micro_usd) if suggestion.cap_micro_usd is not None else None
        ),
        suggested_window=suggestion.window,
        suggested_models=list(suggestion.models),
        unavailable=[m for m in suggestion.models if m not in {c.id for c in choices}],
        choices=choices,
        models=models,
        checked=checked,
        summary=summary(ask.client_name, cap_micro, window, len(checked)),
        cap_usd=cap_usd or "0",
        window=window,
        windows=WINDOWS,
        request_id=request_id,
        action=action,
        timezone=user.timezone,
        error=error,
        error_field=error_field,
        expiry_choices=ends_choices,
        expiry=expiry,
        suggested_expiry=dict(ends_choices).get(str(suggestion.expires_in_s))
        if suggestion.expires_in_s
        else None,
    )


async def _choice(
    request: Request, user: User, form: Form
) -> tuple[list[str], int, str] | tuple[None, str, tuple[list[str], str, str], str]:
    """The person's models, cap and window, or (None, error, what to show again, field)."""
    chosen = list(dict.fromkeys(form.all("models")))
    cap_text = form.get("cap_usd").strip()
    window = form.get("window", "month")
    choices = await model_choices(kf_of(request), user.id)
    available = {c.id for c in choices if c.priced}
    again = ([m for m in chosen if m in available], cap_text, window if window in WINDOWS else "")
    unpriced = [m for m in chosen if m not in available and m in {c.id for c in choices}]
    if unpriced:
        message = f"no price is known for {unpriced[0]}, so it cannot be metered"
        return None, message, again, "models"
    if any(m not in available for m in chosen):
        return None, "choose models from the list", again, "models"
    if not chosen and available:
        return (
            None,
            "choose at least one model: with none, the app can make no call",
            again,
            ("models"),
        )
    if window not in WINDOWS:
        return None, "choose a day, a week or a month", again, "window"
    try:
        cap = parse_usd(cap_text)
    except ValueError:
        return None, "enter an amount in US dollars, such as 5 or 2.50", again, "cap_usd"
    if cap == 0:
        return None, "a cap of $0 would refuse every call; enter an amount", again, "cap_usd"
    return chosen, cap, window


async def save_grant(
    request: Request,
    user: User,
    client_id: str,
    models: list[str],
    cap: int,
    window: str,
    expires_at: float | Unchanged | None = UNCHANGED,
) -> Grant:
    """Create or update the person's grant for this app, keeping every policy field
    (rates, per-model caps, wallet, webhook...) other than the primary cap and window,
    and ending it at ``expires_at`` (its tokens too; None: never)."""
    store = kf_of(request).store
    existing = await store.grants.active_for(user.id, client_id)
    primary = SpendLimit(window, cap)
    if existing is not None:
        policy = policy_of(existing).with_changes(primary, old_window=existing.window)
    else:
        policy = Policy().with_changes(primary)
    return await store.grants.upsert(
        user_id=user.id,
        client_id=client_id,
        models=models,
        cap_micro_usd=cap,
        window=window,
        timezone=user.timezone,
        policy_json=policy.to_json(),
        expires_at=expires_at,
        token_ttls_s=token_ttls_s(kf_of(request).settings),
    )


async def _decision_form(request: Request, user: User) -> tuple[Form, dict[str, Any]] | Response:
    try:
        form = await read_form(request, kf_of(request).settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    entry = _pending(request).get(form.get("request_id"))
    if entry is None:
        return error_page(
            request,
            400,
            "This sign-in request has expired",
            "Go back to the app and start signing in again.",
            user,
        )
    return form, entry


async def _decide(
    request: Request,
    user: User,
    form: Form,
    ask: ConsentAsk,
    request_id: str,
    action_path: str,
    now: float,
) -> Grant | Response | None:
    """The person's answer on a consent page, the same for the code and the device flow:
    None when they denied (the request is forgotten; the caller tells the app), a page to
    show (an unknown choice; the form again, with the error by its field), or the grant
    they approved, saved with the models, cap, window and end they chose."""
    action = form.get("action")
    if action == "deny":
        _forget(request, request_id)
        return None
    if action != "approve":
        return error_page(request, 400, "Unknown choice", "Choose Allow or Deny.", user)
    chosen = await _choice(request, user, form)
    if chosen[0] is None:
        checked, cap_text, window = chosen[2]
        return await _consent(
            request,
            user,
            ask,
            request_id,
            action_path,
            status=400,
            error=chosen[1],
            error_field=chosen[3],
            checked=checked,
            cap_usd=cap_text,
            window=window or None,
        )
    models, cap, window = chosen
    ends = chosen_expiry(form.get("expires_in", KEEP_EXPIRY), now)
    if isinstance(ends, str):
        return error_page(request, 400, "Choose when access ends", ends, user)
    return await save_grant(request, user, ask.client_id, models, cap, window, ends)


# --- authorization endpoint ----------------------------------------------------------


def _authorize_error(request: Request, exc: OAuthError, status: int) -> Response:
    if exc.redirect_uri is None:
        # Never sent back to an address Keyfob cannot trust (RFC 9700): the person is told
        # what to do here; the technical reason is kept for the app's developer.
        words = sign_in_words(exc, kf_of(request).settings.issuer)
        return error_page(request, 400, words.title, words.message, next_step=words.next_step)
    return redirect(rfc6749.error_redirect(exc, kf_of(request).settings.issuer), status)


async def authorize(request: Request) -> Response:
    """GET: validate the request, make sure the person is logged in, show consent."""
    kf = kf_of(request)
    if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
        return error_page(
            request, 400, "This sign-in request is not valid", "the request is too long"
        )
    try:
        areq = await rfc6749.validate_authorization_request(
            kf.store, request.query_params.multi_items(), kf.settings
        )
    except OAuthError as exc:
        return _authorize_error(request, exc, 302)
    user = await current_user(request)
    if user is None:
        return login_redirect(request, 302)
    request_id = _remember(request, {"kind": "code", "params": areq.as_params()})
    return await _consent(request, user, areq.ask(), request_id, rfc8414.AUTHORIZATION_PATH)


async def authorize_decision(request: Request) -> Response:
    """POST: the person's decision on the consent page (CSRF-checked)."""
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return redirect("/login")
    read = await _decision_form(request, user)
    if isinstance(read, Response):
        return read
    form, entry = read
    request_id = form.get("request_id")
    try:
        if entry.get("kind", "code") != "code":
            raise KeyError("kind")
        params = dict(entry["params"])
        params["suggested_models"] = tuple(params.get("suggested_models") or ())
        stored = AuthorizationRequest(**params)
        areq = await rfc6749.validate_authorization_request(
            kf.store, stored.as_query(), kf.settings
        )
    except (TypeError, KeyError, ValueError):
        _forget(request, request_id)
        return error_page(
            request,
            400,
            "This sign-in request is not valid",
            "Go back to the app and start signing in again.",
            user,
        )
    except OAuthError as exc:
        _forget(request, request_id)
        return _authorize_error(request, exc, 303)

    grant = await _decide(
        request, user, form, areq.ask(), request_id, rfc8414.AUTHORIZATION_PATH, time.time()
    )
    if grant is None:
        denied = OAuthError(
            "access_denied",
            "the person denied access",
            redirect_uri=areq.redirect_uri,
            state=areq.state,
        )
        return redirect(rfc6749.error_redirect(denied, kf.settings.issuer))
    if isinstance(grant, Response):
        return grant
    code = await rfc6749.issue_code(
        kf.store, kf.settings, areq, user_id=user.id, grant_id=grant.id, now=time.time()
    )
    _forget(request, request_id)
    return redirect(rfc6749.success_redirect(areq, code, kf.settings.issuer))


# --- device flow: the person's side (RFC 8628 3.3) -----------------------------------


def _device_page(
    request: Request, user: User, status: int = 200, code: str = "", error: str | None = None
) -> Response:
    return page(request, "device.html", status, user=user, user_code=code[:16], error=error)


async def device(request: Request) -> Response:
    """GET: the form where the person types the code their device shows."""
    user = await current_user(request)
    if user is None:
        return login_redirect(request, 302)
    return _device_page(request, user, code=request.query_params.get("user_code", ""))


async def device_submit(request: Request) -> Response:
    """POST: look the code up (rate-limited per address), then show the consent page."""
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return redirect("/login")
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    throttle = limit_backends.throttle(request, "device")
    address = _address(request)
    typed = form.get("user_code")[:32]
    wait = await throttle.retry_after("device", address)
    if wait > 0:
        response = _device_page(
            request, user, 429, typed, f"Too many wrong codes; try again in {int(wait) + 1} s."
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    found = await rfc8628.pending_request(kf.store, typed, time.time())
    if found is None:
        await throttle.failed("device", address)
        return _device_page(
            request, user, 400, typed, "That code is not valid or has expired. Check your device."
        )
    await throttle.succeeded("device", address)
    normal = rfc8628.normalize_user_code(typed)
    request_id = _remember(request, {"kind": "device", "user_code": normal})
    return await _consent(request, user, found.ask(), request_id, "/device/consent")


async def device_decision(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return redirect("/login")
    read = await _decision_form(request, user)
    if isinstance(read, Response):
        return read
    form, entry = read
    request_id = form.get("request_id")
    now = time.time()
    found = None
    if entry.get("kind") == "device" and isinstance(entry.get("user_code"), str):
        found = await rfc8628.pending_request(kf.store, entry["user_code"], now)
    if found is None:
        _forget(request, request_id)
        return error_page(
            request,
            400,
            "This device request has expired",
            "Start again on your device to get a new code.",
            user,
        )
    grant = await _decide(request, user, form, found.ask(), request_id, "/device/consent", now)
    if grant is None:
        await rfc8628.decide(
            kf.store,
            found.device_code_hash,
            approved=False,
            user_id=user.id,
            grant_id=None,
            now=now,
        )
        return page(
            request, "device_done.html", user=user, approved=False, app_name=found.client.name
        )
    if isinstance(grant, Response):
        return grant
    decided = await rfc8628.decide(
        kf.store, found.device_code_hash, approved=True, user_id=user.id, grant_id=grant.id, now=now
    )
    _forget(request, request_id)
    if not decided:
        return error_page(
            request, 400, "This device request has expired", "Start again on your device.", user
        )
    return page(request, "device_done.html", user=user, approved=True, app_name=found.client.name)


# --- JSON endpoints: token, device authorization, revocation, introspection ----------


def _json_error(exc: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="keyfob"'
    return JSONResponse(exc.as_json(), status_code=exc.status, headers=headers)


async def _form_params(request: Request) -> list[tuple[str, str]]:
    """The urlencoded body, with a size limit and strict decoding. Raises OAuthError."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        body = await read_limited(request, kf_of(request).settings.max_form_bytes)
    except BodyTooLarge:
        raise OAuthError("invalid_request", "the request body is too large", 413) from None
    try:
        return parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body could not be decoded") from None


async def _client_request(request: Request) -> tuple[dict[str, str], Any]:
    """Parameters (each at most once) and the authenticated client."""
    kf = kf_of(request)
    params, repeated = rfc6749.single_values(await _form_params(request))
    if repeated:
        raise OAuthError("invalid_request", f"parameters sent more than once: {sorted(repeated)}")
    if any(len(v) > rfc6749.MAX_PARAM for v in params.values()):
        raise OAuthError("invalid_request", "a parameter is too long")
    client_id = params.get("client_id", "")
    if client_metadata.is_document_id(client_id) and len(client_id) <= client_metadata.MAX_URL:
        await rfc6749.find_client(kf.store, kf.settings, client_id)
    client = await rfc6749.authenticate_client(
        kf.store, params, request.headers.get("authorization")
    )
    return params, client


async def token(request: Request) -> Response:
    kf = kf_of(request)
    try:
        items = await _form_params(request)
        result = await rfc6749.token_request(
            kf.store, kf.settings, items, request.headers.get("authorization"), time.time()
        )
    except OAuthError as exc:
        return _json_error(exc)
    return JSONResponse(result, headers=NO_STORE)


async def device_authorization(request: Request) -> Response:
    kf = kf_of(request)
    limiter = limit_backends.window_limiter(request, "device-codes", DEVICE_CODES_PER_10_MIN, 600.0)
    try:
        wait = await limiter.hit(_address(request))
        if wait > 0:
            raise OAuthError("slow_down", "too many device requests from this address", 429)
        params, client = await _client_request(request)
        result = await rfc8628.device_authorization(
            kf.store, kf.settings, client, params, time.time()
        )
    except OAuthError as exc:
        return _json_error(exc)
    return JSONResponse(result, headers=NO_STORE)


async def revoke(request: Request) -> Response:
    try:
        params, client = await _client_request(request)
        await rfc7009.revoke(kf_of(request).store, client, params)
    except OAuthError as exc:
        return _json_error(exc)
    return Response(status_code=200, headers=NO_STORE)


async def introspect(request: Request) -> Response:
    kf = kf_of(request)
    try:
        params, client = await _client_request(request)
        result = await rfc7662.introspect(kf.store, kf.settings, client, params, time.time())
    except OAuthError as exc:
        return _json_error(exc)
    return JSONResponse(result, headers=NO_STORE)


async def register(request: Request) -> Response:
    """RFC 7591: public clients only, JSON in and out, rate-limited per address."""
    kf = kf_of(request)
    try:
        if not kf.settings.dynamic_registration:
            raise OAuthError("access_denied", "dynamic client registration is disabled", 403)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise OAuthError("invalid_request", "the body must be application/json")
        limiter = limit_backends.window_limiter(
            request, "registrations", kf.settings.registrations_per_hour_per_address, 3600.0
        )
        if await limiter.hit(_address(request)) > 0:
            raise OAuthError("slow_down", "too many registrations from this address", 429)
        try:
            raw = await read_limited(request, rfc7591.MAX_BODY_BYTES)
        except BodyTooLarge:
            raise OAuthError("invalid_request", "the request body is too large", 413) from None
        result = await rfc7591.register(kf.store, rfc7591.parse(raw))
    except OAuthError as exc:
        response = _json_error(exc)
        if exc.status == 429:
            response.headers["Retry-After"] = "3600"
        return response
    log.info("registered public client %s", result["client_id"])
    return JSONResponse(result, status_code=201, headers=NO_STORE)


ROUTES: list[BaseRoute] = [
    Route(rfc8414.METADATA_PATH, metadata, methods=["GET"]),
    Route(rfc9728.METADATA_PATH, resource_metadata, methods=["GET"]),
    Route(rfc9728.SUFFIXED_PATH, resource_metadata, methods=["GET"]),
    Route(rfc8414.AUTHORIZATION_PATH, authorize, methods=["GET"]),
    Route(rfc8414.AUTHORIZATION_PATH, authorize_decision, methods=["POST"]),
    Route(rfc8414.TOKEN_PATH, token, methods=["POST"]),
    Route(rfc8414.DEVICE_AUTHORIZATION_PATH, device_authorization, methods=["POST"]),
    Route(rfc8414.REVOCATION_PATH, revoke, methods=["POST"]),
    Route(rfc8414.INTROSPECTION_PATH, introspect, methods=["POST"]),
    Route(rfc8414.REGISTRATION_PATH, register, methods=["POST"]),
    Route(rfc8628.VERIFICATION_PATH, device, methods=["GET"]),
    Route(rfc8628.VERIFICATION_PATH, device_submit, methods=["POST"]),
    Route("/device/consent", device_decision, methods=["POST"]),
]
