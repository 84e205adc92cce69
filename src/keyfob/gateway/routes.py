"""The gateway's routes, each wrapped so that no client input can produce a bare 500.

``GatewayError`` becomes its OpenAI-shaped answer; anything else is a genuine server
fault, logged by type (never with the request body or a credential) and answered with
an OpenAI-shaped 500.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyfob import metrics
from keyfob.context import Keyfob
from keyfob.gateway.anthropic_errors import anthropic_response
from keyfob.gateway.auth import authenticate
from keyfob.gateway.chat import chat_completions
from keyfob.gateway.embeddings import embeddings
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.headers import iso_utc
from keyfob.gateway.messages import count_tokens, messages
from keyfob.gateway.models import granted_models
from keyfob.gateway.responses import responses
from keyfob.gateway.state import GatewayState
from keyfob.oauth.rfc9728 import www_authenticate

log = logging.getLogger("keyfob.gateway")

Handler = Callable[[Request], Awaitable[Response]]


def _challenged(request: Request, exc: GatewayError) -> GatewayError:
    """Point every 401 at the protected-resource metadata (RFC 9728); count Keyfob's own
    refusals by reason (an upstream's error passed on is counted as an upstream error)."""
    if exc.status < 500 and not exc.from_upstream:
        metrics.refused(exc.code or str(exc.status))
    if exc.status == 401:
        kf: Keyfob = request.app.state.kf
        exc.headers["WWW-Authenticate"] = www_authenticate(kf.settings, exc.auth_error)
    return exc


def openai_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return _challenged(request, exc).response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; nothing to log
        except Exception as exc:
            log.exception("gateway fault in %s: %s", request.url.path, type(exc).__name__)
            return GatewayError(
                500,
                "internal error in the Keyfob gateway",
                code="internal_error",
                type_="api_error",
            ).response()

    return wrapped


def anthropic_errors(handler: Handler) -> Handler:
    """The same, answered in Anthropic's error shape (for the /v1/messages surface)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return anthropic_response(_challenged(request, exc))
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception as exc:
            log.exception("gateway fault in %s: %s", request.url.path, type(exc).__name__)
            return anthropic_response(GatewayError(500, "internal error in the Keyfob gateway"))

    return wrapped


async def list_models(request: Request) -> Response:
    """GET /v1/models: only what this app's grant allows, as canonical ids."""
    kf: Keyfob = request.app.state.kf
    gw = GatewayState.of(request.app)
    _hash, _token, grant = await authenticate(kf, gw.grants, request, fresh=True)
    providers = await gw.providers_of(kf, grant.user_id)
    granted = granted_models(grant, providers)
    if "anthropic-version" in request.headers:  # the Anthropic SDK's models.list()
        items = [
            {
                "type": "model",
                "id": cid,
                "display_name": cid,
                "created_at": iso_utc(p.created_at),
            }
            for cid, p in granted
        ]
        return JSONResponse(
            {
                "data": items,
                "has_more": False,
                "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None,
            }
        )
    data = [
        {"id": cid, "object": "model", "created": int(p.created_at), "owned_by": p.name}
        for cid, p in granted
    ]
    return JSONResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/chat/completions", openai_errors(chat_completions), methods=["POST"]),
    Route("/v1/models", openai_errors(list_models), methods=["GET"]),
    Route("/v1/responses", openai_errors(responses), methods=["POST"]),
    Route("/v1/embeddings", openai_errors(embeddings), methods=["POST"]),
    Route("/v1/messages", anthropic_errors(messages), methods=["POST"]),
    Route("/v1/messages/count_tokens", anthropic_errors(count_tokens), methods=["POST"]),
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
