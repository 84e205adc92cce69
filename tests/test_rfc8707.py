"""Resource indicators (RFC 8707): tokens are bound to the gateway's audience."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyfob.oauth import rfc8707
from keyfob.settings import Settings
from keyfob.store.records import Token
from keyfob.tokens import Kind, hash_token, new_id, new_token
from tests.oauth_app import InProcess, pkce, query_of
from tests.support import both_databases

SETTINGS = Settings(public_url="https://kf.example")
CB = "http://127.0.0.1/cb"


def test_audience_rules() -> None:
    assert rfc8707.gateway_resource(SETTINGS) == "https://kf.example/v1"
    assert rfc8707.check_resource(None, SETTINGS) == "https://kf.example/v1"
    assert rfc8707.check_resource("https://kf.example/v1/", SETTINGS) == "https://kf.example/v1"
    for other in (
        "https://evil.example/v1",
        "https://kf.example",
        "https://kf.example/v2",
        "https://kf.example.evil.example/v1",
        "https://kf.example/v1#frag",
        "/v1",
        "urn:x",
    ):
        with pytest.raises(Exception) as exc:
            rfc8707.check_resource(other, SETTINGS)
        assert getattr(exc.value, "error", None) == "invalid_target", other


def test_gateway_check() -> None:
    """What the gateway calls: its own audience or a legacy token without one."""
    assert rfc8707.token_audience_ok("https://kf.example/v1", SETTINGS)
    assert rfc8707.token_audience_ok(None, SETTINGS)
    assert not rfc8707.token_audience_ok("https://other.example/v1", SETTINGS)
    assert not rfc8707.token_audience_ok("https://kf.example/admin", SETTINGS)


@pytest.fixture
def kf(tmp_path: Path, database_url: str | None) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", database_url=database_url) as app:
        yield app


def test_authorization_request_for_another_resource_refused(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    _, challenge = pkce()
    kf.logged_in()
    answer = kf.client.get(
        kf.authorize_url(cid, CB, challenge, resource="https://api.other.example/")
    )
    assert answer.status_code == 302
    q = query_of(answer.headers["location"])
    assert q["error"] == "invalid_target" and q["state"] == "st-123"


def test_tokens_carry_the_gateway_audience(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    tokens = kf.code_flow(cid, CB, resource=kf.url + "/v1")
    stored = kf.run(kf.store.tokens.get, hash_token(tokens["access_token"]))
    assert stored is not None and stored.resource == kf.url + "/v1"
    # no resource named: still bound to the gateway
    tokens = kf.code_flow(cid, CB)
    stored = kf.run(kf.store.tokens.get, hash_token(tokens["access_token"]))
    assert stored is not None and stored.resource == kf.url + "/v1"


def test_token_request_for_another_resource_refused(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    verifier, challenge = pkce()
    location = kf.logged_in().approve(kf.authorize_url(cid, CB, challenge))
    answer = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": query_of(location)["code"],
            "redirect_uri": CB,
            "code_verifier": verifier,
            "client_id": cid,
            "resource": "https://other.example/v1",
        },
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target"


@both_databases
def test_refresh_for_another_resource_refused_without_spending(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    tokens = kf.code_flow(cid, CB)
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    bad = kf.client.post(
        "/oauth/token", data={**form, "client_id": cid, "resource": "https://x.example/"}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_target"
    # the refresh token was not spent by the refused request
    good = kf.client.post(
        "/oauth/token", data={**form, "client_id": cid, "resource": kf.url + "/v1"}
    )
    assert good.status_code == 200, good.text


def test_gateway_refuses_a_token_for_another_resource(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    grant = kf.run(
        kf.store.grants.upsert,
        user_id=kf.owner.id,
        client_id=cid,
        models=["fake/m1"],
        cap_micro_usd=1_000_000,
    )
    token = new_token(Kind.ACCESS)
    now = time.time()
    record = Token(
        hash_token(token),
        "access",
        grant.id,
        cid,
        new_id(),
        "",
        "https://other.example/v1",
        now,
        now + 3600,
        None,
        None,
    )
    kf.run(kf.store.tokens.save, record)
    answer = kf.client.get("/v1/models", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 401
