"""Authorization server metadata (RFC 8414), in process and from a running server."""

from __future__ import annotations

import httpx

from keyfob.oauth import rfc8414
from keyfob.settings import Settings
from tests.support import KeyfobServer


def test_metadata_fields() -> None:
    settings = Settings(public_url="https://kf.example/")
    meta = rfc8414.metadata(settings)
    assert meta["issuer"] == "https://kf.example"
    assert meta["authorization_endpoint"] == "https://kf.example/oauth/authorize"
    assert meta["token_endpoint"] == "https://kf.example/oauth/token"
    assert meta["response_types_supported"] == ["code"]
    assert meta["grant_types_supported"] == [
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
    ]
    assert meta["device_authorization_endpoint"] == (
        "https://kf.example/oauth/device_authorization"
    )
    assert meta["registration_endpoint"] == "https://kf.example/oauth/register"
    assert meta["revocation_endpoint"] == "https://kf.example/oauth/revoke"
    assert meta["introspection_endpoint"] == "https://kf.example/oauth/introspect"
    assert meta["client_id_metadata_document_supported"] is True
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["token_endpoint_auth_methods_supported"] == [
        "none",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "implicit" not in meta["grant_types_supported"]
    assert "password" not in meta["grant_types_supported"]


def test_served_metadata(server: KeyfobServer) -> None:
    response = httpx.get(server.url + "/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    # RFC 8414 3.3: the issuer in the document is the one the client used to find it
    assert meta["issuer"] == server.url
    assert meta["token_endpoint"] == server.url + "/oauth/token"
    assert meta["code_challenge_methods_supported"] == ["S256"]
