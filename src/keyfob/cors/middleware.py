"""CORS for the paths browser-only apps need, applied before any endpoint runs.

Called by ``server.KeyfobApp`` only for requests that carry an ``Origin`` header, so
server-side apps, SDKs and CLIs (no ``Origin``) pay one scan of the header list and
nothing else.

Why a preflight can be answered without knowing the app: it carries neither the bearer
token nor the ``client_id``, only the origin, a method and header names. So it says only
what the endpoint accepts (methods, a fixed header list, never credentials), for any
well-formed origin, and the decision that matters is made on the actual request, before
the endpoint does any work: the client is identified (token -> grant -> client for
``/v1``, the form's ``client_id`` for ``/oauth/token`` and ``/oauth/revoke``) and the
origin must be one of that client's. A foreign origin is refused with a 403 that carries
no ``Access-Control-Allow-Origin``, so the browser hides even the refusal from the page.
A passed preflight gives a foreign page nothing it could not already do with a plain
form post, which is refused the same way.

``Access-Control-Allow-Credentials`` is never sent: tokens travel in headers or form
fields, never in cookies, so no cross-origin request can ride on a person's session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from keyfob.cors import policy
from keyfob.cors.policy import Area
from keyfob.settings import Settings

log = logging.getLogger("keyfob.cors")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: How long a client's origins are trusted before the store is read again.
CLIENT_ORIGINS_TTL_S = 5.0
_VARY = (b"vary", b"Origin")
_EXPOSE = (b"access-control-expose-headers", policy.EXPOSED_HEADERS.encode("ascii"))
_ANY = (b"access-control-allow-origin", b"*")


def request_origin(scope: Scope) -> bytes | None:
    """The raw ``Origin`` header, or None (the common case: not a browser)."""
    for name, value in scope["headers"]:
        if name == b"origin":
            return bytes(value)
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


class Cors:
    """The CORS decisions of one server (its own origin, a cache of clients' origins)."""

    def __init__(self, settings: Settings) -> None:
        from keyfob.gateway.cache import TTLCache

        self.own_origin = policy.origin_of_uri(settings.issuer)
        self.max_form_bytes = settings.max_form_bytes
        self.origins: TTLCache[frozenset[str]] = TTLCache(CLIENT_ORIGINS_TTL_S)

    def _same_origin(self, scope: Scope, origin: str) -> bool:
        if origin == self.own_origin:
            return True
        host = _header(scope, b"host")
        if not host:
            return False
        return policy.parse_origin(origin) == policy.parse_origin(f"{scope['scheme']}://{host}")

    async def __call__(
        self, app: Any, scope: Scope, receive: Receive, send: Send, raw_origin: bytes
    ) -> None:
        """Handle one request with an ``Origin`` header; ``app`` is the Keyfob app."""
        origin_text = raw_origin.decode("latin-1")
        area = policy.area_of(scope["path"])
        if area is None or self._same_origin(scope, origin_text):
            await app(scope, receive, send)  # same-origin rules: the browser enforces them
            return
        method = scope["method"]
        if method == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(area, scope, origin_text)(scope, receive, send)
            return
        if area is Area.DISCOVERY:
            await app(scope, receive, _allowing_any(send))
            return
        origin = policy.parse_origin(origin_text)
        if origin is None:
            await _refusal(area, scope["path"], "this origin may not call Keyfob")(
                scope, receive, send
            )
            return
        if area is Area.OAUTH:
            await self._oauth(app, scope, receive, send, origin)
        else:
            await self._gateway(app, scope, receive, send, origin)

    def _preflight(self, area: Area, scope: Scope, origin_text: str) -> Response:
        requested_method = _header(scope, b"access-control-request-method") or ""
        requested_headers = _header(scope, b"access-control-request-headers") or ""
        origin = policy.parse_origin(origin_text)
        allow_headers = policy.allowed_request_headers(area, requested_headers)
        if (
            (origin is None and area is not Area.DISCOVERY)
            or not policy.method_allowed(area, requested_method)
            or allow_headers is None
        ):
            # No Access-Control-Allow-Origin: the browser stops here, nothing is sent.
            return PlainTextResponse("cross-origin request not allowed", status_code=403)
        headers = {
            "Access-Control-Allow-Origin": "*" if area is Area.DISCOVERY else str(origin),
            "Access-Control-Allow-Methods": ", ".join(policy.METHODS[area]),
            "Access-Control-Max-Age": str(policy.PREFLIGHT_MAX_AGE_S),
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        if allow_headers:
            headers["Access-Control-Allow-Headers"] = allow_headers
        if _header(scope, b"access-control-request-private-network") == "true":
            # A page on a public site calling a personal Keyfob on loopback (Chromium's
            # Private Network Access): the same rule, the actual request decides.
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Response(status_code=204, headers=headers)

    async def _client_origins(self, app: Any, client_id: str) -> frozenset[str] | None:
        kf = getattr(app.state, "kf", None)
        if kf is None or not client_id or len(client_id) > 255:
            return None

        async def load() -> frozenset[str] | None:
            client = await kf.store.clients.get(client_id)
            return None if client is None else policy.client_origins(client)

        return await self.origins.get_or_load(client_id, load)

    async def _oauth(
        self, app: Any, scope: Scope, receive: Receive, send: Send, origin: str
    ) -> None:
        """Token and revocation requests: the form's client_id must be a public client
        whose origins include this one (read here, then replayed to the endpoint)."""
        body, complete = await _read_body(receive, self.max_form_bytes)
        client_id = _form_client_id(body) if complete else None
        origins = await self._client_origins(app, client_id) if client_id else None
        if origins is None or origin not in origins:
            await _refusal(Area.OAUTH, scope["path"], "this origin is not one of the app's")(
                scope, receive, send
            )
            return
        await app(scope, _replay(body, receive), _allowing(send, origin))

    async def _gateway(
        self, app: Any, scope: Scope, receive: Receive, send: Send, origin: str
    ) -> None:
        """``/v1``: the bearer token's client must own the origin. A request whose token
        is missing or no longer valid is answered by the endpoint (its 401 is readable by
        the page, so the app knows to refresh or sign in again: it says nothing a holder
        of that token could not learn from any HTTP client)."""
        from keyfob.gateway.auth import authenticate
        from keyfob.gateway.errors import GatewayError
        from keyfob.gateway.state import GatewayState

        kf = getattr(app.state, "kf", None)
        if kf is None:
            await app(scope, receive, send)
            return
        try:
            _hash, token, _grant = await authenticate(
                kf, GatewayState.of(app).grants, Request(scope)
            )
        except GatewayError:
            await app(scope, receive, _allowing(send, origin))
            return
        origins = await self._client_origins(app, token.client_id)
        if origins is None or origin not in origins:
            await _refusal(Area.GATEWAY, scope["path"], "this origin is not one of the app's")(
                scope, receive, send
            )
            return
        await app(scope, receive, _allowing(send, origin))


def _refusal(area: Area, path: str, message: str) -> Response:
    """A 403 in the format of the endpoint's clients, with no CORS header at all."""
    if area is Area.OAUTH:
        return JSONResponse(
            {"error": "unauthorized_client", "error_description": message},
            status_code=403,
            headers={"Cache-Control": "no-store"},
        )
    if path.startswith("/v1/messages"):
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": "permission_error", "message": message},
        }
    else:
        body = {
            "error": {
                "message": message,
                "type": "permission_error",
                "param": None,
                "code": "origin_not_allowed",
            }
        }
    return JSONResponse(body, status_code=403)


def _allowing(send: Send, origin: str) -> Send:
    """``send`` that adds this origin's permission (no credentials) to the answer."""
    allow = (b"access-control-allow-origin", origin.encode("latin-1"))

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A new list: responses may share pre-encoded header lists.
            message = {**message, "headers": [*message.get("headers", ()), allow, _EXPOSE, _VARY]}
        await send(message)

    return wrapped


def _allowing_any(send: Send) -> Send:
    """Public documents: ``*`` unless the endpoint already said so."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(k.lower() == b"access-control-allow-origin" for k, _v in headers):
                headers.append(_ANY)
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body; complete is False if it is longer (or the
    client went away)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _form_client_id(body: bytes) -> str | None:
    try:
        items = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        return None
    ids = [v for k, v in items if k == "client_id"]
    return ids[0] if len(ids) == 1 else None
