"""Errors in OpenAI's JSON shape, so official SDKs raise their usual exception classes.

``{"error": {"message", "type", "param", "code"}}``; 401s carry ``WWW-Authenticate:
Bearer`` (RFC 6750) so OAuth-aware clients know to fetch a new token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse

from keyfob.pricing.bounds import InputBound, Unbounded
from keyfob.pricing.model_limits import ModelLimits

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "insufficient_quota",
}


class GatewayError(Exception):
    """A refusal the client should see; raised anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPES.get(status, "api_error")
        self.headers = dict(headers or {})
        #: For 401s: the RFC 6750 error code of the bearer challenge.
        self.auth_error: str | None = None
        #: An upstream's own error passed on (not a refusal of Keyfob's; ``metrics``).
        self.from_upstream = False

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
        headers = {**(extra_headers or {}), **self.headers}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def unauthorized(message: str, *, error: str | None = "invalid_token") -> GatewayError:
    """A 401; the route wrapper completes ``WWW-Authenticate`` with the RFC 9728
    ``resource_metadata`` URL (it knows the settings), so MCP clients find the server."""
    challenge = 'Bearer realm="keyfob"'
    if error:
        challenge += f', error="{error}"'
    exc = GatewayError(
        401, message, code="invalid_api_key", headers={"WWW-Authenticate": challenge}
    )
    exc.auth_error = error
    return exc


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def bounded(
    bound: Callable[[dict[str, Any], str, ModelLimits | None], InputBound],
    body: dict[str, Any],
    model: str,
    limits: ModelLimits | None,
) -> InputBound:
    """``bound(body, model, limits)``, a request nothing bounds refused with a 400."""
    try:
        return bound(body, model, limits)
    except Unbounded as exc:
        raise invalid(str(exc), param=exc.param, code="unbounded_cost") from None
