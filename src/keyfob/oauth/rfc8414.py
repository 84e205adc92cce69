"""Authorization server metadata (RFC 8414), served at /.well-known/oauth-authorization-server.

Clients (and MCP hosts) discover endpoints and capabilities here instead of hard-coding
them; advertising only S256 and only the code flow tells them up front what we refuse.
"""

from __future__ import annotations

from typing import Any

from keyfob.settings import Settings

AUTHORIZATION_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
METADATA_PATH = "/.well-known/oauth-authorization-server"


def metadata(settings: Settings) -> dict[str, Any]:
    issuer = settings.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + AUTHORIZATION_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
        ],
        "authorization_response_iss_parameter_supported": True,
    }
