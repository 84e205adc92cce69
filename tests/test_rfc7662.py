"""Token introspection (RFC 7662): confidential clients, their own tokens only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oauth_app import InProcess

WEB = "https://app.example/cb"
CB = "http://127.0.0.1/cb"


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as app:
        yield app


def test_active_access_and_refresh_tokens(kf: InProcess) -> None:
    cid, secret = kf.register([WEB], public=False)
    assert secret is not None
    before = int(time.time())
    tokens = kf.code_flow(cid, WEB, secret=secret, scope="inference")
    answer = kf.client.post(
        "/oauth/introspect", data={"token": tokens["access_token"]}, auth=(cid, secret)
    )
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["active"] is True
    assert body["client_id"] == cid and body["scope"] == "inference"
    assert body["token_type"] == "Bearer"
    assert body["aud"] == kf.url + "/v1"
    assert before <= body["iat"] <= body["exp"] - 3500
    refresh = kf.client.post(
        "/oauth/introspect",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(cid, secret),
    ).json()
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"


def test_inactive_answers_say_nothing_more(kf: InProcess) -> None:
    cid, secret = kf.register([WEB], public=False, name="Server app")
    other, other_secret = kf.register([WEB], public=False, name="Other server app")
    assert secret and other_secret
    tokens = kf.code_flow(cid, WEB, secret=secret)
    for token in ("kfat_unknown", "garbage", tokens["access_token"]):
        body = kf.client.post(
            "/oauth/introspect", data={"token": token}, auth=(other, other_secret)
        ).json()
        assert body == {"active": False}, token
    kf.client.post("/oauth/revoke", data={"token": tokens["refresh_token"]}, auth=(cid, secret))
    for token in (tokens["access_token"], tokens["refresh_token"]):
        body = kf.client.post("/oauth/introspect", data={"token": token}, auth=(cid, secret))
        assert body.json() == {"active": False}


def test_public_clients_and_bad_credentials_refused(kf: InProcess) -> None:
    public, _ = kf.register([CB])
    tokens = kf.code_flow(public, CB)
    answer = kf.client.post(
        "/oauth/introspect", data={"token": tokens["access_token"], "client_id": public}
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    cid, _ = kf.register([WEB], public=False)
    wrong = kf.client.post(
        "/oauth/introspect", data={"token": tokens["access_token"]}, auth=(cid, "kfcs_x")
    )
    assert wrong.status_code == 401
    assert "active" not in wrong.json()
