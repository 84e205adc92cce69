"""Errors in Anthropic's shape, for the ``/v1/messages`` surface.

``{"type": "error", "error": {"type": ..., "message": ...}}`` with Anthropic's type names,
so the Anthropic SDKs raise their usual exception classes; the status and headers are
those of the same ``GatewayError`` the OpenAI surface would answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from keyfob.gateway.errors import GatewayError

BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
TYPES = frozenset(BY_STATUS.values())


def anthropic_response(
    exc: GatewayError, extra_headers: Mapping[str, str] | None = None
) -> JSONResponse:
    fallback = exc.type if exc.type in TYPES else "api_error"
    type_ = BY_STATUS.get(exc.status, fallback)
    body = {"type": "error", "error": {"type": type_, "message": exc.message}}
    headers = {**(extra_headers or {}), **exc.headers}
    return JSONResponse(body, status_code=exc.status, headers=headers)
