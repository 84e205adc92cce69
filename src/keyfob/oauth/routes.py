"""HTTP endpoints of the authorization server: metadata, authorize (+ consent), token.

This is the only oauth module that knows Starlette. It turns requests into plain data,
calls the protocol modules, and maps ``OAuthError`` to HTTP: at the token endpoint a
JSON body; at the authorization endpoint an HTML page when the client or redirect URI
is not yet trusted (never a redirect: no open redirector), else a redirect carrying
``error``, ``state`` and ``iss``.

Between the authorization request and the person's decision, the validated request is
kept in the (signed) session under a random id, and validated again on submit, so a
client or redirect URI removed meanwhile cannot receive a code.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keyfob.limits import BodyTooLarge, read_limited
from keyfob.money import format_usd, parse_usd
from keyfob.oauth import rfc6749, rfc8414
from keyfob.oauth.errors import OAuthError
from keyfob.oauth.rfc6749 import AuthorizationRequest
from keyfob.store.records import User
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import current_user, error_page, kf_of, login_redirect, page, redirect

log = logging.getLogger("keyfob.oauth")

PENDING_KEY = "oauth_pending"
PENDING_MAX = 3
PENDING_MAX_CHARS = 2400
PENDING_TTL_S = 15 * 60
MAX_QUERY_BYTES = 8192
DEFAULT_CAP_USD = "5"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def metadata(request: Request) -> Response:
    return JSONResponse(
        rfc8414.metadata(kf_of(request).settings), headers={"Cache-Control": "public, max-age=3600"}
    )


# --- authorization endpoint ----------------------------------------------------------


def _authorize_error(request: Request, exc: OAuthError, status: int) -> Response:
    if exc.redirect_uri is None:
        return error_page(
            request, 400, "This sign-in request is not valid", exc.description or exc.error
        )
    return redirect(rfc6749.error_redirect(exc, kf_of(request).settings.issuer), status)


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


def _remember(request: Request, areq: AuthorizationRequest) -> str:
    pending = _pending(request)
    request_id = secrets.token_urlsafe(16)
    pending[request_id] = {"at": time.time(), "params": areq.as_params()}
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


async def _available_models(request: Request, user: User) -> list[str]:
    providers = await kf_of(request).store.providers.list(user.id)
    return [f"{p.name}/{m}" for p in providers for m in p.models]


async def _consent(
    request: Request,
    user: User,
    areq: AuthorizationRequest,
    request_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    checked: list[str] | None = None,
    cap_usd: str | None = None,
) -> Response:
    kf = kf_of(request)
    models = await _available_models(request, user)
    existing = await kf.store.grants.active_for(user.id, areq.client_id)
    if checked is None:
        checked = [m for m in existing.models if m in models] if existing else models
    if cap_usd is None:
        if existing is not None:
            cap_usd = format_usd(existing.cap_micro_usd).rstrip("0").rstrip(".")
        elif areq.suggested_cap_micro_usd is not None:
            cap_usd = format_usd(areq.suggested_cap_micro_usd).rstrip("0").rstrip(".")
        else:
            cap_usd = DEFAULT_CAP_USD
    return page(
        request,
        "consent.html",
        status,
        user=user,
        app_name=areq.client_name,
        redirect_host=urlsplit(areq.redirect_uri).netloc or areq.redirect_uri,
        models=models,
        checked=checked,
        cap_usd=cap_usd or "0",
        request_id=request_id,
        timezone=user.timezone,
        error=error,
    )


async def authorize(request: Request) -> Response:
    """GET: validate the request, make sure the person is logged in, show consent."""
    kf = kf_of(request)
    if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
        return error_page(
            request, 400, "This sign-in request is not valid", "the request is too long"
        )
    try:
        areq = await rfc6749.validate_authorization_request(
            kf.store, request.query_params.multi_items()
        )
    except OAuthError as exc:
        return _authorize_error(request, exc, 302)
    user = await current_user(request)
    if user is None:
        return login_redirect(request, 302)
    return await _consent(request, user, areq, _remember(request, areq))


async def authorize_decision(request: Request) -> Response:
    """POST: the person's decision on the consent page (CSRF-checked)."""
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return redirect("/login")
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    request_id = form.get("request_id")
    entry = _pending(request).get(request_id)
    if entry is None:
        return error_page(
            request,
            400,
            "This sign-in request has expired",
            "Go back to the app and start signing in again.",
            user,
        )
    try:
        stored = AuthorizationRequest(**entry["params"])
        areq = await rfc6749.validate_authorization_request(kf.store, stored.as_query())
    except (TypeError, KeyError):
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

    action = form.get("action")
    if action == "deny":
        _forget(request, request_id)
        denied = OAuthError(
            "access_denied",
            "the person denied access",
            redirect_uri=areq.redirect_uri,
            state=areq.state,
        )
        return redirect(rfc6749.error_redirect(denied, kf.settings.issuer))
    if action != "approve":
        return error_page(request, 400, "Unknown choice", "Choose Allow or Deny.", user)

    chosen = list(dict.fromkeys(form.all("models")))
    cap_text = form.get("cap_usd").strip()
    available = set(await _available_models(request, user))
    unknown = [m for m in chosen if m not in available]
    try:
        if unknown:
            raise ValueError("choose models from the list")
        cap_micro_usd = parse_usd(cap_text)
    except ValueError as exc:
        return await _consent(
            request,
            user,
            areq,
            request_id,
            status=400,
            error=str(exc),
            checked=[m for m in chosen if m in available],
            cap_usd=cap_text,
        )

    grant = await kf.store.grants.upsert(
        user_id=user.id,
        client_id=areq.client_id,
        models=chosen,
        cap_micro_usd=cap_micro_usd,
        window="month",
        timezone=user.timezone,
    )
    code = await rfc6749.issue_code(
        kf.store, kf.settings, areq, user_id=user.id, grant_id=grant.id, now=time.time()
    )
    _forget(request, request_id)
    return redirect(rfc6749.success_redirect(areq, code, kf.settings.issuer))


# --- token endpoint ------------------------------------------------------------------


def _token_error(exc: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="keyfob"'
    return JSONResponse(exc.as_json(), status_code=exc.status, headers=headers)


async def token(request: Request) -> Response:
    kf = kf_of(request)
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if ctype != "application/x-www-form-urlencoded":
            raise OAuthError(
                "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
        try:
            body = await read_limited(request, kf.settings.max_form_bytes)
        except BodyTooLarge:
            raise OAuthError("invalid_request", "the request body is too large", 413) from None
        try:
            items = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, errors="strict"
            )
        except (UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_request", "the body could not be decoded") from None
        result = await rfc6749.token_request(
            kf.store, kf.settings, items, request.headers.get("authorization"), time.time()
        )
    except OAuthError as exc:
        return _token_error(exc)
    return JSONResponse(result, headers=NO_STORE)


ROUTES: list[BaseRoute] = [
    Route(rfc8414.METADATA_PATH, metadata, methods=["GET"]),
    Route(rfc8414.AUTHORIZATION_PATH, authorize, methods=["GET"]),
    Route(rfc8414.AUTHORIZATION_PATH, authorize_decision, methods=["POST"]),
    Route(rfc8414.TOKEN_PATH, token, methods=["POST"]),
]
