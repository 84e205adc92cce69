"""Protected resource metadata (RFC 9728) for the gateway, and the 401 challenge."""

from __future__ import annotations

from pathlib import Path

from keyfob.oauth import rfc9728
from keyfob.settings import Settings
from tests.oauth_app import InProcess

SETTINGS = Settings(public_url="https://kf.example")


def test_metadata_document() -> None:
    meta = rfc9728.metadata(SETTINGS)
    assert meta["resource"] == "https://kf.example/v1"
    assert meta["authorization_servers"] == ["https://kf.example"]
    assert meta["bearer_methods_supported"] == ["header"]
    assert meta["scopes_supported"]


def test_www_authenticate() -> None:
    value = rfc9728.www_authenticate(SETTINGS)
    assert value.startswith("Bearer ")
    assert 'resource_metadata="https://kf.example/.well-known/oauth-protected-resource"' in value
    assert "error=" not in value
    assert 'error="invalid_token"' in rfc9728.www_authenticate(SETTINGS, "invalid_token")


def test_served_at_both_locations(tmp_path: Path) -> None:
    with InProcess(tmp_path / "data") as kf:
        for path in (rfc9728.METADATA_PATH, rfc9728.SUFFIXED_PATH):
            answer = kf.client.get(path)
            assert answer.status_code == 200
            assert answer.json()["resource"] == kf.url + "/v1"
            assert answer.json()["authorization_servers"] == [kf.url]
        # the authorization server it names serves its own metadata
        meta = kf.client.get("/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == kf.url


def test_gateway_401_points_at_the_metadata(tmp_path: Path) -> None:
    """Every 401 of the gateway carries resource_metadata (wired in gateway/errors.py)."""
    with InProcess(tmp_path / "data") as kf:
        for headers in ({}, {"authorization": "Bearer kfat_nope"}):
            answer = kf.client.get("/v1/models", headers=headers)
            assert answer.status_code == 401
            challenge = answer.headers["www-authenticate"]
            assert f'resource_metadata="{kf.url}/.well-known/oauth-protected-resource"' in challenge
