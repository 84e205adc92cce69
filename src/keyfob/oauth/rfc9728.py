"""Protected resource metadata (RFC 9728) for the gateway.

MCP clients start from a 401: its ``WWW-Authenticate`` header points at this document,
which names the authorization server to use, so a client needs nothing but the gateway
URL. Served at ``/.well-known/oauth-protected-resource`` and at the path-suffixed
location RFC 9728 3.1 derives from the resource (``.../oauth-protected-resource/v1``).
"""

from __future__ import annotations

from typing import Any

from keyfob.oauth import rfc8707
from keyfob.settings import Settings

METADATA_PATH = "/.well-known/oauth-protected-resource"
SUFFIXED_PATH = METADATA_PATH + rfc8707.GATEWAY_PATH
SCOPES_SUPPORTED = ("inference",)


def metadata_url(settings: Settings) -> str:
    return settings.issuer + METADATA_PATH


def metadata(settings: Settings) -> dict[str, Any]:
    return {
        "resource": rfc8707.gateway_resource(settings),
        "authorization_servers": [settings.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "resource_name": "Keyfob gateway",
    }


def www_authenticate(settings: Settings, error: str | None = None) -> str:
    """The challenge of every gateway 401 (RFC 6750 3 + RFC 9728 5.1)."""
    challenge = f'Bearer realm="keyfob", resource_metadata="{metadata_url(settings)}"'
    if error:
        challenge += f', error="{error}"'
    return challenge
