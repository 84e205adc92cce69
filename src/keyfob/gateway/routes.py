"""The gateway's routes, each wrapped so that no client input can produce a bare 500.

``GatewayError`` becomes its OpenAI-shaped answer; anything else is a genuine server
fault, logged by type (never with the request body or a credential) and answered with
an OpenAI-shaped 500.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyfob.context import Keyfob
from keyfob.gateway.auth import authenticate
from keyfob.gateway.chat import chat_completions
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.models import granted_models
from keyfob.gateway.state import GatewayState

log = logging.getLogger("keyfob.gateway")

Handler = Callable[[Request], Awaitable[Response]]


def openai_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return exc.response()
        except Exception as exc:
            log.exception("gateway fault in %s: %s", request.url.path, type(exc).__name__)
            return GatewayError(
                500,
                "internal error in the Keyfob gateway",
                code="internal_error",
                type_="api_error",
            ).response()

    return wrapped


async def list_models(request: Request) -> Response:
    """GET /v1/models: only what this app's grant allows, as canonical ids."""
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request)
    providers = await gw.providers_of(kf, grant.user_id)
    data = [
        {"id": cid, "object": "model", "created": int(p.created_at), "owned_by": p.name}
        for cid, p in granted_models(grant, providers)
    ]
    return JSONResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/chat/completions", openai_errors(chat_completions), methods=["POST"]),
    Route("/v1/models", openai_errors(list_models), methods=["GET"]),
]


def _keyfob_api_routes() -> list[Route]:
    from keyfob.gateway import keyfob_api

    return [
        Route("/v1/keyfob/quote", openai_errors(keyfob_api.quote), methods=["POST"]),
        Route("/v1/keyfob/allowance", openai_errors(keyfob_api.allowance), methods=["GET"]),
        Route("/v1/keyfob/usage", openai_errors(keyfob_api.usage), methods=["GET"]),
    ]


#: Keyfob's own API for apps (quotes, allowance, usage), registered by server.py.
KEYFOB_API_ROUTES = _keyfob_api_routes()
