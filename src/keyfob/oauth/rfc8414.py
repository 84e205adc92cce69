"""Authorization server metadata (RFC 8414), served at /.well-known/oauth-authorization-server.

Clients (and MCP hosts) discover endpoints and capabilities here instead of hard-coding
them; advertising only S256, only the code and device flows, tells them up front what we
refuse. Every path lives here so routes and metadata cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from keyfob.oauth import rfc7009, rfc7591, rfc7662, rfc8628, rfc9728
from keyfob.settings import Settings

AUTHORIZATION_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
METADATA_PATH = "/.well-known/oauth-authorization-server"
DEVICE_AUTHORIZATION_PATH = rfc8628.DEVICE_AUTHORIZATION_PATH
REGISTRATION_PATH = rfc7591.REGISTRATION_PATH
REVOCATION_PATH = rfc7009.REVOCATION_PATH
INTROSPECTION_PATH = rfc7662.INTROSPECTION_PATH
CLIENT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]


def metadata(settings: Settings) -> dict[str, Any]:
    issuer = settings.issuer
    body: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": issuer + AUTHORIZATION_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "device_authorization_endpoint": issuer + DEVICE_AUTHORIZATION_PATH,
        "revocation_endpoint": issuer + REVOCATION_PATH,
        "introspection_endpoint": issuer + INTROSPECTION_PATH,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", rfc8628.GRANT_TYPE],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS[1:],
        "scopes_supported": list(rfc9728.SCOPES_SUPPORTED),
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }
    if settings.dynamic_registration:
        body["registration_endpoint"] = issuer + REGISTRATION_PATH
    return body
