"""Token revocation (RFC 7009)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyfob.tokens import hash_token
from tests.oauth_app import InProcess
from tests.support import both_databases

CB = "http://127.0.0.1/cb"
WEB = "https://app.example/cb"


@pytest.fixture
def kf(tmp_path: Path, database_url: str | None) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", database_url=database_url) as app:
        yield app


def live(kf: InProcess, token: str) -> bool:
    import time

    found = kf.run(kf.store.tokens.active_with_grant, hash_token(token), "access", time.time())
    return found is not None


@both_databases
def test_revoke_access_token(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    tokens = kf.code_flow(cid, CB)
    answer = kf.client.post(
        "/oauth/revoke",
        data={"token": tokens["access_token"], "token_type_hint": "access_token", "client_id": cid},
    )
    assert answer.status_code == 200
    assert not live(kf, tokens["access_token"])
    # the refresh token still works: only the access token was revoked
    refreshed = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": cid,
        },
    )
    assert refreshed.status_code == 200


@both_databases
def test_revoking_refresh_token_revokes_its_family(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    tokens = kf.code_flow(cid, CB)
    # a wrong hint is only a hint
    answer = kf.client.post(
        "/oauth/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "access_token",
            "client_id": cid,
        },
    )
    assert answer.status_code == 200
    assert not live(kf, tokens["access_token"])
    refreshed = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": cid,
        },
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "token", ["kfat_unknown", "kfrt_unknown", "not-a-keyfob-token", "kfac_somecode"]
)
def test_unknown_tokens_answer_200(kf: InProcess, token: str) -> None:
    cid, _ = kf.register([CB])
    answer = kf.client.post("/oauth/revoke", data={"token": token, "client_id": cid})
    assert answer.status_code == 200


def test_other_clients_token_is_not_revoked(kf: InProcess) -> None:
    victim, _ = kf.register([CB], name="Victim")
    attacker, _ = kf.register([CB], name="Attacker")
    tokens = kf.code_flow(victim, CB)
    answer = kf.client.post(
        "/oauth/revoke", data={"token": tokens["access_token"], "client_id": attacker}
    )
    assert answer.status_code == 200  # no oracle...
    assert live(kf, tokens["access_token"])  # ...and no effect


def test_confidential_client_must_authenticate(kf: InProcess) -> None:
    cid, secret = kf.register([WEB], public=False)
    assert secret is not None
    tokens = kf.code_flow(cid, WEB, secret=secret)
    for data, auth in (
        ({"token": tokens["access_token"], "client_id": cid}, None),
        ({"token": tokens["access_token"]}, (cid, "kfcs_wrong")),
    ):
        answer = kf.client.post("/oauth/revoke", data=data, auth=auth)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
        assert live(kf, tokens["access_token"])
    ok = kf.client.post("/oauth/revoke", data={"token": tokens["access_token"]}, auth=(cid, secret))
    assert ok.status_code == 200 and not live(kf, tokens["access_token"])


def test_malformed_requests(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    assert kf.client.post("/oauth/revoke", data={"client_id": cid}).json()["error"] == (
        "invalid_request"
    )
    assert kf.client.post("/oauth/revoke", json={"token": "x"}).status_code == 400
    big = kf.client.post(
        "/oauth/revoke",
        content=b"token=" + b"a" * 100_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    meta = kf.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["revocation_endpoint"] == kf.url + "/oauth/revoke"
