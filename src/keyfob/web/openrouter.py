"""Linking an OpenRouter account from the dashboard, through OpenRouter's PKCE flow.

``GET /providers/openrouter/link`` asks for an optional credit limit for the key; its
POST (CSRF-checked) starts the flow: the PKCE verifier, the limit and the provider's name
go into the person's session (the signed cookie; never into a URL) and the browser is
sent to OpenRouter. OpenRouter sends it back to ``/providers/openrouter/callback?code=``,
where the code and the session's verifier (used once, then dropped) are traded for a
key, which is linked like any other credential (terms check, encryption).

PKCE binds the code to this session's verifier, so a code from someone else's flow is
refused by OpenRouter itself; a pending link also expires after ``PENDING_TTL_S``.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.money import parse_usd
from keyfob.providers import UpstreamError
from keyfob.providers.linking import LinkRefused, link_provider
from keyfob.providers.openrouter_pkce import begin, exchange
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import current_user, error_page, kf_of, login_redirect, page, redirect
from keyfob.web.sessions import PENDING_TTL_S

log = logging.getLogger("keyfob.web")

CALLBACK_PATH = "/providers/openrouter/callback"
#: The session key of a link in progress.
PENDING = "openrouter_link"
MAX_CODE_LENGTH = 512


def _form(request: Request, user: Any, status: int = 200, **values: Any) -> Response:
    context = {"name": "openrouter", "limit_usd": "", "error": None, **values}
    return page(request, "openrouter_link.html", status, user=user, **context)


async def link(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    if request.method == "GET":
        return _form(request, user)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    name = form.get("name").strip()[:64] or "openrouter"
    limit_text = form.get("limit_usd").strip()[:32]
    try:
        limit_micro = parse_usd(limit_text) if limit_text else None
        if limit_micro is not None and limit_micro <= 0:
            raise ValueError("the limit is a positive amount of USD (or empty for none)")
    except ValueError as exc:
        return _form(request, user, 400, name=name, limit_usd=limit_text, error=str(exc))
    if await kf.store.providers.by_name(user.id, name) is not None:
        error = f"a provider named {name!r} already exists; choose another name"
        return _form(request, user, 400, name=name, limit_usd=limit_text, error=error)
    start = begin(kf.settings.issuer + CALLBACK_PATH, auth_base=kf.settings.openrouter_auth_url)
    request.session[PENDING] = {
        "verifier": start.verifier,
        "limit_micro_usd": limit_micro,
        "name": name,
        "started_at": time.time(),
    }
    return redirect(start.url)


def _limit_usd(micro: Any) -> float | None:
    if not isinstance(micro, int) or micro <= 0:
        return None
    return float(Decimal(micro) / Decimal(1_000_000))


async def _exchange(request: Request, code: str, verifier: str, limit_usd: float | None) -> str:
    kf = kf_of(request)
    api_base = kf.settings.openrouter_api_url
    if kf.http is not None:
        return await exchange(kf.http, code, verifier, limit_usd=limit_usd, api_base=api_base)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        return await exchange(http, code, verifier, limit_usd=limit_usd, api_base=api_base)


def openrouter_failure(message: str, api_url: str, status: int | None) -> str:
    """What went wrong, in words: never a raw exception name such as
    ``ClientConnectorDNSError``."""
    if status is not None and status not in (401, 403, 404):
        return (
            f"OpenRouter refused the code (HTTP {status}); the link may have expired or "
            "been used already"
        )
    if status in (401, 403):
        return "OpenRouter refused the code: the approval was not accepted"
    from keyfob.providers.connection import in_words

    words, _field = in_words(message, api_url, status)
    return f"Keyfob could not reach OpenRouter: {words}"


async def callback(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    pending = request.session.pop(PENDING, None)  # used once, whatever happens next
    code = request.query_params.get("code", "")
    if (
        not isinstance(pending, dict)
        or not isinstance(pending.get("verifier"), str)
        or time.time() - float(pending.get("started_at") or 0) > PENDING_TTL_S
    ):
        return error_page(
            request,
            400,
            "No OpenRouter link in progress",
            "This link has expired or was not started here; start it again from the dashboard.",
            user,
        )
    if not code or len(code) > MAX_CODE_LENGTH:
        return error_page(
            request,
            400,
            "OpenRouter sent no code",
            "Start the link again from the dashboard.",
            user,
        )
    try:
        key = await _exchange(
            request, code, pending["verifier"], _limit_usd(pending.get("limit_micro_usd"))
        )
    except UpstreamError as exc:
        log.info("OpenRouter key exchange failed: %s", exc)
        return error_page(
            request,
            502,
            "OpenRouter did not issue a key",
            openrouter_failure(str(exc), kf.settings.openrouter_api_url, exc.status),
            user,
            next_step="Start the link again from the Providers page.",
        )
    try:
        provider = await link_provider(
            kf,
            user_id=user.id,
            name=str(pending.get("name") or "openrouter"),
            kind="openrouter",
            base_url=kf.settings.openrouter_api_url,
            api_key=key,
            models=[],
        )
    except LinkRefused as exc:
        return error_page(request, 400, "The key could not be linked", str(exc), user)
    from keyfob.web.provider_pages import flash_linked

    await flash_linked(request, provider, list(provider.models), [])
    return redirect("/")


ROUTES: list[BaseRoute] = [
    Route("/providers/openrouter/link", link, methods=["GET", "POST"]),
    Route(CALLBACK_PATH, callback, methods=["GET"]),
]
