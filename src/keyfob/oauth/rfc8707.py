"""Resource indicators (RFC 8707): every token names the one audience it is good for.

Keyfob protects one resource, its gateway at ``{issuer}/v1``. An app may name it in the
``resource`` parameter (MCP clients always do); naming anything else is refused with
``invalid_target``, so a token can never be minted for, or replayed at, another server.
Tokens and codes store their audience; the gateway checks it with ``token_audience_ok``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from keyfob.oauth.errors import OAuthError
from keyfob.settings import Settings

GATEWAY_PATH = "/v1"
MAX_RESOURCE = 2048


def gateway_resource(settings: Settings) -> str:
    """The gateway's resource identifier (its audience)."""
    return settings.issuer + GATEWAY_PATH


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_resource(requested: str | None, settings: Settings) -> str:
    """The audience for a request naming ``requested`` (None: the gateway). Raises."""
    audience = gateway_resource(settings)
    if requested is None:
        return audience
    if len(requested) > MAX_RESOURCE:
        raise OAuthError("invalid_target", "resource is too long")
    parts = urlsplit(requested)
    if not parts.scheme or not parts.netloc or "#" in requested:
        # RFC 8707 2: an absolute URI without a fragment
        raise OAuthError("invalid_target", "resource must be an absolute URI without fragment")
    if not _same(requested, audience):
        raise OAuthError("invalid_target", f"this server only issues tokens for {audience}")
    return audience


def check_token_resource(requested: str | None, bound: str | None, settings: Settings) -> None:
    """A token request may repeat the audience of its code or refresh token, nothing else."""
    if requested is None:
        return
    audience = check_resource(requested, settings)
    if bound is not None and not _same(bound, audience):
        raise OAuthError("invalid_target", "resource differs from the one authorized")


def token_audience_ok(token_resource: str | None, settings: Settings) -> bool:
    """May the gateway accept a token bound to ``token_resource``?

    None is a token minted before audiences were recorded (or by Keyfob itself for its
    own tests and CLI): it can only ever have been meant for this gateway."""
    return token_resource is None or _same(token_resource, gateway_resource(settings))
