"""OAuth errors as data: the RFC 6749 error code, a human description, the HTTP status.

Why one exception type: the protocol layer decides *what* went wrong; the route decides
*how* to say it (a JSON body at the token endpoint, a redirect or an HTML page at the
authorization endpoint). ``redirect_uri`` is set only once the client and its redirect
URI have been validated, so an error can never be bounced to an unverified address.
"""

from __future__ import annotations

from typing import Literal

#: Every error code Keyfob answers with: RFC 6749 4.1.2.1 and 5.2, RFC 8628 3.5 (device
#: flow), RFC 7591 3.2.2 (registration), RFC 8707 (``invalid_target``) and OpenID's
#: ``request_not_supported`` / ``request_uri_not_supported`` (RFC 9101).
ErrorCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "unsupported_response_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    "authorization_pending",
    "slow_down",
    "expired_token",
    "invalid_redirect_uri",
    "invalid_client_metadata",
    "invalid_target",
    "request_not_supported",
    "request_uri_not_supported",
]


class OAuthError(Exception):
    def __init__(
        self,
        error: ErrorCode,
        description: str = "",
        status: int = 400,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error: ErrorCode = error
        self.description = description
        self.status = status
        #: Where the error may be sent (validated); None means "show it, never redirect".
        self.redirect_uri = redirect_uri
        self.state = state

    def as_json(self) -> dict[str, str]:
        body: dict[str, str] = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)
