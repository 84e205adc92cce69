"""OAuth errors as data: the RFC 6749 error code, a human description, the HTTP status.

Why one exception type: the protocol layer decides *what* went wrong; the route decides
*how* to say it (a JSON body at the token endpoint, a redirect or an HTML page at the
authorization endpoint). ``redirect_uri`` is set only once the client and its redirect
URI have been validated, so an error can never be bounced to an unverified address.
"""

from __future__ import annotations


class OAuthError(Exception):
    def __init__(
        self,
        error: str,
        description: str = "",
        status: int = 400,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status
        #: Where the error may be sent (validated); None means "show it, never redirect".
        self.redirect_uri = redirect_uri
        self.state = state

    def as_json(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)
