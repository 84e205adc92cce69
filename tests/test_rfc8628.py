"""Device authorization grant (RFC 8628): codes, the /device page, polling answers.

Protocol rules are driven with a controlled clock against a real store; the pages run
in process; one flow runs over real HTTP with Authlib's client polling.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession

from keyfob.oauth import rfc6749, rfc8414, rfc8628
from keyfob.oauth.clients import register_app
from keyfob.oauth.errors import OAuthError
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Client, User
from keyfob.tokens import hash_token
from tests.oauth_app import Browser, InProcess, LiveServer, checked, hidden
from tests.support import both_databases

SETTINGS = Settings(public_url="https://kf.example", device_code_interval_s=5)
GRANT = rfc8628.GRANT_TYPE


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open("sqlite+aiosqlite:///" + str(tmp_path / "k.db"))
    yield s
    await s.close()


@pytest.fixture
async def owner(store: Store) -> User:
    return await store.users.create("owner", "not-a-real-hash", is_owner=True)


@pytest.fixture
async def cli_app(store: Store) -> Client:
    client, _ = await register_app(
        store, name="CLI", redirect_uris=["http://127.0.0.1/cb"], public=True
    )
    return client


async def start(store: Store, client: Client, now: float, **params: str) -> dict[str, Any]:
    return await rfc8628.device_authorization(store, SETTINGS, client, params, now)


async def poll(store: Store, client: Client, device_code: str, now: float) -> dict[str, Any]:
    form = [("grant_type", GRANT), ("device_code", device_code), ("client_id", client.id)]
    return await rfc6749.token_request(store, SETTINGS, form, None, now)


async def approve(store: Store, owner: User, client: Client, user_code: str, now: float) -> None:
    pending = await rfc8628.pending_request(store, user_code, now)
    assert pending is not None
    grant = await store.grants.upsert(
        user_id=owner.id, client_id=client.id, models=["p/m"], cap_micro_usd=1_000_000
    )
    assert await rfc8628.decide(
        store, pending.device_code_hash, approved=True, user_id=owner.id, grant_id=grant.id, now=now
    )


async def test_device_authorization_response(store: Store, cli_app: Client) -> None:
    """RFC 8628 3.2: every field, user code from the unambiguous alphabet."""
    answer = await start(store, cli_app, 1000.0)
    assert answer["device_code"].startswith("kfdc_")
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", answer["user_code"])
    assert answer["verification_uri"] == "https://kf.example/device"
    assert answer["verification_uri_complete"] == (
        "https://kf.example/device?user_code=" + answer["user_code"]
    )
    assert answer["expires_in"] == SETTINGS.device_code_ttl_s
    assert answer["interval"] == 5
    stored = await store.devices.get(hash_token(answer["device_code"]))
    assert stored is not None and stored.status == "pending"
    # neither code is stored in the clear
    assert answer["user_code"].replace("-", "") not in stored.user_code_hash


def test_user_codes_are_unambiguous_and_normalised() -> None:
    for _ in range(200):
        code = rfc8628.new_user_code()
        assert not set(code) & set("AEIOUY01258")
    assert rfc8628.normalize_user_code("wdjb-mjht") == "WDJBMJHT"
    assert rfc8628.normalize_user_code(" WDJB MJHT ") == "WDJBMJHT"
    for bad in ("WDJB-MJH", "WDJB-MJHTX", "WDJB-MJH0", "AEIO-UWXZ", "x" * 100, ""):
        assert rfc8628.normalize_user_code(bad) is None


async def test_polling_answers(store: Store, owner: User, cli_app: Client) -> None:
    """authorization_pending, slow_down (+5 s, kept), then tokens exactly once."""
    t0 = 1000.0
    answer = await start(store, cli_app, t0)
    device_code = answer["device_code"]
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, device_code, t0 + 1)
    assert exc.value.error == "authorization_pending"
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, device_code, t0 + 2)  # 1 s after the last poll: too fast
    assert exc.value.error == "slow_down"
    record = await store.devices.get(hash_token(device_code))
    assert record is not None and record.interval_s == 10
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, device_code, t0 + 8)  # 6 s later: still under the new 10 s
    assert exc.value.error == "slow_down"
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, device_code, t0 + 30)
    assert exc.value.error == "authorization_pending"
    await approve(store, owner, cli_app, answer["user_code"], t0 + 31)
    tokens = await poll(store, cli_app, device_code, t0 + 50)
    assert tokens["access_token"].startswith("kfat_")
    assert tokens["refresh_token"].startswith("kfrt_")
    assert tokens["token_type"] == "Bearer"


async def test_device_code_single_use_replay_revokes(
    store: Store, owner: User, cli_app: Client
) -> None:
    answer = await start(store, cli_app, 1000.0)
    await approve(store, owner, cli_app, answer["user_code"], 1001.0)
    tokens = await poll(store, cli_app, answer["device_code"], 1010.0)
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, answer["device_code"], 1020.0)
    assert exc.value.error == "invalid_grant"
    access = await store.tokens.get(hash_token(tokens["access_token"]))
    assert access is not None and access.revoked_at is not None


async def test_access_denied(store: Store, owner: User, cli_app: Client) -> None:
    answer = await start(store, cli_app, 1000.0)
    pending = await rfc8628.pending_request(store, answer["user_code"], 1001.0)
    assert pending is not None
    assert await rfc8628.decide(
        store, pending.device_code_hash, approved=False, user_id=owner.id, grant_id=None, now=1001.0
    )
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, answer["device_code"], 1010.0)
    assert exc.value.error == "access_denied"
    # a decided request cannot be decided again (no flipping a denial into approval)
    assert await rfc8628.pending_request(store, answer["user_code"], 1011.0) is None


async def test_expired_token(store: Store, owner: User, cli_app: Client) -> None:
    answer = await start(store, cli_app, 1000.0)
    late = 1000.0 + SETTINGS.device_code_ttl_s + 1
    assert await rfc8628.pending_request(store, answer["user_code"], late) is None
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, answer["device_code"], late)
    assert exc.value.error == "expired_token"


async def test_device_code_bound_to_client(store: Store, owner: User, cli_app: Client) -> None:
    other, _ = await register_app(
        store, name="Other", redirect_uris=["http://127.0.0.1/x"], public=True
    )
    answer = await start(store, cli_app, 1000.0)
    await approve(store, owner, cli_app, answer["user_code"], 1001.0)
    with pytest.raises(OAuthError) as exc:
        await poll(store, other, answer["device_code"], 1010.0)
    assert exc.value.error == "invalid_grant"
    # the rightful client still gets its tokens
    assert "access_token" in await poll(store, cli_app, answer["device_code"], 1020.0)


@pytest.mark.parametrize("code", ["", "kfat_notadevicecode", "kfdc_unknown"])
async def test_bad_device_codes(store: Store, cli_app: Client, code: str) -> None:
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, code, 1000.0)
    assert exc.value.error in ("invalid_request", "invalid_grant")


async def test_revoked_grant_gives_no_tokens(store: Store, owner: User, cli_app: Client) -> None:
    answer = await start(store, cli_app, 1000.0)
    await approve(store, owner, cli_app, answer["user_code"], 1001.0)
    grant = await store.grants.active_for(owner.id, cli_app.id)
    assert grant is not None
    await store.grants.revoke(grant.id)
    with pytest.raises(OAuthError) as exc:
        await poll(store, cli_app, answer["device_code"], 1010.0)
    assert exc.value.error == "invalid_grant"


def test_metadata_advertises_device_flow() -> None:
    meta = rfc8414.metadata(SETTINGS)
    assert meta["device_authorization_endpoint"] == "https://kf.example/oauth/device_authorization"
    assert GRANT in meta["grant_types_supported"]


# --------------------------------------------------------------------------------------
# Endpoints and pages, in process


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", device_code_interval_s=1) as app:
        yield app


def device_start(kf: InProcess, client_id: str, **extra: str) -> dict[str, Any]:
    answer = kf.client.post("/oauth/device_authorization", data={"client_id": client_id, **extra})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, Any] = answer.json()
    return body


def test_endpoint_errors_are_json(kf: InProcess) -> None:
    cid, _ = kf.register(["http://127.0.0.1/cb"])
    cases = [
        ({"client_id": "kfapp_nope"}, 401, "invalid_client"),
        ({"client_id": cid, "resource": "https://evil.example/"}, 400, "invalid_target"),
        ({"client_id": cid, "keyfob_window": "year"}, 400, "invalid_request"),
        ({"client_id": cid, "scope": 'bad"scope'}, 400, "invalid_scope"),
    ]
    for data, status, error in cases:
        answer = kf.client.post("/oauth/device_authorization", data=data)
        assert (answer.status_code, answer.json()["error"]) == (status, error), data
    big = kf.client.post(
        "/oauth/device_authorization",
        content=b"client_id=" + b"a" * 100_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413 and big.json()["error"] == "invalid_request"
    wrong_type = kf.client.post("/oauth/device_authorization", json={"client_id": cid})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"] == "invalid_request"


def test_confidential_client_must_authenticate(kf: InProcess) -> None:
    cid, secret = kf.register(["https://app.example/cb"], public=False)
    assert secret is not None
    refused = kf.client.post("/oauth/device_authorization", data={"client_id": cid})
    assert refused.status_code == 401
    ok = kf.client.post("/oauth/device_authorization", data={"scope": ""}, auth=(cid, secret))
    assert ok.status_code == 200, ok.text


def test_device_page_flow_same_consent(kf: InProcess) -> None:
    """The /device page leads to the same consent page, suggestions pre-filled."""
    cid, _ = kf.register(["http://127.0.0.1/cb"], name="My CLI")
    started = device_start(
        kf, cid, keyfob_cap_usd="3", keyfob_window="week", keyfob_models="fake/m2"
    )
    browser = kf.logged_in()
    # verification_uri_complete pre-fills the code, but the person still confirms it
    prefilled = kf.client.get("/device?user_code=" + started["user_code"])
    assert prefilled.status_code == 200 and started["user_code"] in prefilled.text
    page = browser.enter_device_code(started["user_code"].lower())
    assert page.status_code == 200
    assert "My CLI" in page.text and "waiting on your device" in page.text
    assert checked(page.text) == ["fake/m2"]
    assert 'value="3"' in page.text and '<option value="week" selected>' in page.text
    done = browser.decide(page, post_to="/device/consent", cap_usd="2", window="week")
    assert done.status_code == 200 and "Device connected" in done.text
    answer = kf.client.post(
        "/oauth/token",
        data={"grant_type": GRANT, "device_code": started["device_code"], "client_id": cid},
    )
    assert answer.status_code == 200, answer.text
    grant = kf.run(kf.store.grants.active_for, kf.owner.id, cid)
    assert grant is not None and grant.window == "week" and grant.cap_micro_usd == 2_000_000
    assert grant.models == ("fake/m2",)
    # the same user code cannot be used again
    again = browser.enter_device_code(started["user_code"])
    assert again.status_code == 400


def test_device_page_deny(kf: InProcess) -> None:
    cid, _ = kf.register(["http://127.0.0.1/cb"])
    started = device_start(kf, cid)
    browser = kf.logged_in()
    page = browser.enter_device_code(started["user_code"])
    done = browser.decide(page, action="deny", post_to="/device/consent")
    assert done.status_code == 200 and "Device refused" in done.text
    answer = kf.client.post(
        "/oauth/token",
        data={"grant_type": GRANT, "device_code": started["device_code"], "client_id": cid},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "access_denied"


def test_device_page_needs_login_and_csrf(kf: InProcess) -> None:
    cid, _ = kf.register(["http://127.0.0.1/cb"])
    started = device_start(kf, cid)
    anonymous = kf.client.get("/device?user_code=" + started["user_code"])
    assert anonymous.status_code == 302 and anonymous.headers["location"].startswith("/login")
    kf.logged_in()
    no_csrf = kf.client.post("/device", data={"user_code": started["user_code"]})
    assert no_csrf.status_code == 403


def test_device_page_is_rate_limited(kf: InProcess) -> None:
    """Guessing user codes: after a few wrong ones the page makes the guesser wait."""
    cid, _ = kf.register(["http://127.0.0.1/cb"])
    started = device_start(kf, cid)
    browser = kf.logged_in()
    statuses = [browser.enter_device_code("BCDF-GHJK").status_code for _ in range(7)]
    assert statuses[:5] == [400] * 5 and statuses[-1] == 429
    # even the right code waits now
    blocked = browser.enter_device_code(started["user_code"])
    assert blocked.status_code == 429 and "retry-after" in blocked.headers


def test_device_consent_fixation_refused(kf: InProcess) -> None:
    """A consent form for a device request is only valid in the session that opened it."""
    cid, _ = kf.register(["http://127.0.0.1/cb"])
    started = device_start(kf, cid)
    page = kf.logged_in().enter_device_code(started["user_code"])
    request_id = hidden(page.text, "request_id")
    kf.new_session()
    other = kf.logged_in()
    form = other.http.get("/device")
    answer = kf.client.post(
        "/device/consent",
        data={
            "csrf_token": hidden(form.text, "csrf_token"),
            "request_id": request_id,
            "action": "approve",
            "cap_usd": "5",
            "window": "month",
        },
    )
    assert answer.status_code == 400
    record = kf.run(kf.store.devices.get, hash_token(started["device_code"]))
    assert record is not None and record.status == "pending"


# --------------------------------------------------------------------------------------
# Real HTTP, with Authlib's client posting the device-code grant


@both_databases
def test_authlib_device_flow_and_refresh(tmp_path: Path, database_url: str | None) -> None:
    with LiveServer(tmp_path / "live", device_code_interval_s=1, database_url=database_url) as srv:
        cid, _ = srv.register(["http://127.0.0.1/cb"], name="Headless script")
        meta = httpx.get(srv.url + "/.well-known/oauth-authorization-server").json()
        with AuthlibSession(cid, token_endpoint_auth_method="none") as oauth:
            started = oauth.post(
                meta["device_authorization_endpoint"],
                data={"client_id": cid},
                withhold_token=True,
            ).json()
            pending = oauth.post(
                meta["token_endpoint"],
                data={"grant_type": GRANT, "device_code": started["device_code"], "client_id": cid},
                withhold_token=True,
            )
            assert pending.status_code == 400
            assert pending.json()["error"] == "authorization_pending"
            with httpx.Client(base_url=srv.url, follow_redirects=False) as http:
                browser = Browser(http, "")
                assert browser.login().status_code == 303
                done = browser.approve_device(started["user_code"])
                assert done.status_code == 200 and "Device connected" in done.text
            time.sleep(started["interval"])
            token = oauth.fetch_token(
                meta["token_endpoint"], grant_type=GRANT, device_code=started["device_code"]
            )
            assert token["access_token"].startswith("kfat_")
            first_refresh = token["refresh_token"]
            renewed = oauth.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
            assert renewed["refresh_token"] != first_refresh
            replay = httpx.post(
                meta["token_endpoint"],
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": first_refresh,
                    "client_id": cid,
                },
            )
            assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_requests_oauthlib_device_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same flow from oauthlib's own DeviceClient, through requests-oauthlib."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the token endpoint is loopback
    from oauthlib.oauth2 import DeviceClient
    from requests_oauthlib import OAuth2Session as RequestsOAuthSession

    with LiveServer(tmp_path / "live", device_code_interval_s=1) as srv:
        cid, _ = srv.register(["http://127.0.0.1/cb"], name="Script")
        started = httpx.post(
            srv.url + "/oauth/device_authorization",
            data={"client_id": cid, "keyfob_cap_usd": "1.50", "keyfob_window": "day"},
        ).json()
        with httpx.Client(base_url=srv.url, follow_redirects=False) as http:
            browser = Browser(http, "")
            assert browser.login().status_code == 303
            page = browser.enter_device_code(started["verification_uri_complete"].split("=")[1])
            assert 'value="1.5"' in page.text and "per <strong>day</strong>" in page.text
            done = browser.decide(page, post_to="/device/consent", cap_usd="1.5", window="day")
            assert done.status_code == 200
        with RequestsOAuthSession(client=DeviceClient(cid)) as oauth:
            token = oauth.fetch_token(
                srv.url + "/oauth/token",
                device_code=started["device_code"],
                include_client_id=True,
            )
            assert token["access_token"].startswith("kfat_")
            renewed = oauth.refresh_token(
                srv.url + "/oauth/token", refresh_token=token["refresh_token"], client_id=cid
            )
            assert renewed["refresh_token"] != token["refresh_token"]
