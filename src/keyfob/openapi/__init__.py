"""The OpenAPI 3.1 document Keyfob serves at ``/openapi.json``.

Written by hand, not generated: the gateway validates bodies itself (Starlette, no
Pydantic models, for speed), and the document must describe the surfaces as Keyfob
serves them (the fields it checks, its error shapes per surface, the cost headers), not
the providers' whole APIs. ``tests/test_openapi.py`` keeps it honest: the document is
validated with openapi-spec-validator and schemathesis runs it against a live server
(no 5xx, every answer conforms to its documented status, type and schema).
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyfob import __version__
from keyfob.openapi.paths import paths, security_schemes
from keyfob.openapi.schemas import SCHEMAS
from keyfob.settings import Settings

PATH = "/openapi.json"


@functools.lru_cache(maxsize=4)
def _document(issuer: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keyfob",
            "version": __version__,
            "summary": "OAuth 2.1 authorization server and metered LLM gateway",
            "description": "Apps sign a person in with OAuth 2.1 (PKCE S256, device flow) "
            "and call the OpenAI- and Anthropic-compatible gateway with the access token. "
            "Every metered answer carries its cost in `x-keyfob-*` headers; a refusal by "
            "the allowance is a 429 whose `x-should-retry` tells the official SDKs "
            "whether to retry.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": issuer}],
        "tags": [
            {"name": "gateway", "description": "OpenAI- and Anthropic-compatible surfaces"},
            {"name": "keyfob", "description": "Keyfob's own API for apps"},
            {"name": "oauth", "description": "The authorization server"},
            {"name": "server", "description": "Operations"},
        ],
        "paths": paths(),
        "components": {"schemas": SCHEMAS, "securitySchemes": security_schemes()},
    }


def document(settings: Settings) -> dict[str, Any]:
    """The document for this server (its public URL in ``servers``)."""
    return _document(settings.issuer)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(request.app.state.kf.settings))
