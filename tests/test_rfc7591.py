"""Dynamic client registration (RFC 7591): public clients only, strict metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.oauth_app import InProcess

GOOD: dict[str, Any] = {
    "client_name": "MCP host",
    "redirect_uris": ["http://127.0.0.1:33418/callback", "com.example.host:/cb"],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
}


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", registrations_per_hour_per_address=5) as app:
        yield app


def register(kf: InProcess, body: Any) -> Any:
    return kf.client.post("/oauth/register", json=body)


def test_register_public_client_and_sign_in(kf: InProcess) -> None:
    answer = register(kf, {**GOOD, "client_uri": "https://host.example", "unknown_x": 1})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body and "unknown_x" not in body
    assert body["redirect_uris"] == GOOD["redirect_uris"]
    client = kf.run(kf.store.clients.get, body["client_id"])
    assert client is not None and client.is_public and client.kind == "dynamic"
    assert client.secret_hash is None
    meta = kf.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["registration_endpoint"] == kf.url + "/oauth/register"
    # the new client can sign in, on any loopback port (RFC 8252 7.3)
    tokens = kf.code_flow(body["client_id"], "http://127.0.0.1:50123/callback")
    assert tokens["access_token"].startswith("kfat_")


def test_consent_says_self_registered(kf: InProcess) -> None:
    cid = register(kf, GOOD).json()["client_id"]
    from tests.oauth_app import pkce

    _, challenge = pkce()
    page = kf.logged_in().consent_page(
        kf.authorize_url(cid, "http://127.0.0.1:1/callback", challenge)
    )
    assert "registered itself" in page.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({"client_secret": "chosen-by-me"}, "invalid_client_metadata"),
        ({"client_id": "kfapp_mine"}, "invalid_client_metadata"),
        ({"jwks_uri": "https://evil.example/jwks"}, "invalid_client_metadata"),
        ({"jwks": {"keys": []}}, "invalid_client_metadata"),
        ({"software_statement": "eyJ..."}, "invalid_client_metadata"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"grant_types": ["password"]}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"response_types": ["code", "token"]}, "invalid_client_metadata"),
        ({"client_name": None}, "invalid_client_metadata"),
        ({"client_name": "x" * 129}, "invalid_client_metadata"),
        ({"client_name": "evil\u202eppa"}, "invalid_client_metadata"),
        ({"client_name": ["list"]}, "invalid_client_metadata"),
        ({"client_uri": "javascript:alert(1)"}, "invalid_client_metadata"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "http://127.0.0.1/cb"}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://user@app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/*"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp:/cb"]}, "invalid_redirect_uri"),
        (
            {"redirect_uris": [f"https://app.example/{i}" for i in range(11)]},
            "invalid_redirect_uri",
        ),
    ],
)
def test_strict_validation(kf: InProcess, change: dict[str, Any], error: str) -> None:
    answer = register(kf, {**GOOD, **change})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error


def test_malformed_bodies(kf: InProcess) -> None:
    for content, ctype in (
        (b"[]", "application/json"),
        (b"{not json", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"client_name=x", "application/x-www-form-urlencoded"),
    ):
        answer = kf.client.post("/oauth/register", content=content, headers={"content-type": ctype})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
    big = kf.client.post(
        "/oauth/register",
        content=b'{"client_name": "' + b"a" * 20_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"] == "invalid_request"


def test_rate_limited_per_address(kf: InProcess) -> None:
    statuses = [register(kf, GOOD).status_code for _ in range(6)]
    assert statuses == [201] * 5 + [429]
    limited = register(kf, GOOD)
    assert limited.json()["error"] == "slow_down" and "retry-after" in limited.headers


def test_can_be_disabled(tmp_path: Path) -> None:
    with InProcess(tmp_path / "data", dynamic_registration=False) as kf:
        assert register(kf, GOOD).status_code == 403
        meta = kf.client.get("/.well-known/oauth-authorization-server").json()
        assert "registration_endpoint" not in meta
