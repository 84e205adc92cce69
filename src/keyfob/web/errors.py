"""Styled "not found" and "server error" pages, and the favicon.

Only people get HTML: a path under the APIs (``/v1``, ``/oauth``, ``/.well-known``,
``/api``) or a client that does not accept HTML gets the short plain answer it had
before, so an SDK never has to parse a page.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from keyfob.web.render import SECURITY_HEADERS, current_user, error_page

log = logging.getLogger("keyfob.web")

API_PREFIXES = ("/v1", "/oauth/", "/.well-known/", "/api/", "/healthz")

FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#2452c4"/>'
    '<circle cx="12" cy="16" r="6" fill="none" stroke="#fff" stroke-width="3"/>'
    '<path d="M18 16h10M24 16v5M28 16v4" stroke="#fff" stroke-width="3" '
    'stroke-linecap="round"/></svg>'
)


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(API_PREFIXES):
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or accept in ("", "*/*")


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) else "Not Found"
    if not wants_html(request) or status != 404:
        return PlainTextResponse(str(detail), status_code=status)
    user = await current_user(request) if "session" in request.scope else None
    return error_page(
        request,
        404,
        "Page not found",
        f"There is no page at {request.url.path[:200]}.",
        user,
        next_step="Check the address, or start again from the overview.",
    )


async def server_error(request: Request, exc: Exception) -> Response:
    """The last resort (Starlette re-raises after it, so the error is still logged)."""
    if not wants_html(request):
        return PlainTextResponse("Internal Server Error", status_code=500)
    try:
        return error_page(
            request,
            500,
            "Something went wrong on this Keyfob",
            "The server could not finish this page. Nothing you typed was wrong.",
            None,
            next_step="Try again in a moment; if it keeps happening, the server's log "
            "(keyfob serve) says why.",
        )
    except Exception:  # the page itself failed to render: plain text, never a loop
        log.exception("the error page failed")
        return PlainTextResponse("Internal Server Error", status_code=500)


async def favicon(request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers=headers)


EXCEPTION_HANDLERS = {404: not_found, 500: server_error}

ROUTES: list[BaseRoute] = [
    Route("/favicon.svg", favicon, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
]
