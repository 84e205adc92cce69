"""RFC 6749 as OAuth 2.1 narrows it: code + PKCE, refresh rotation, client authentication.

The first half drives the protocol functions directly against a store (the refresh
rotation on SQLite's inline path and on PostgreSQL's, ``@both_databases``); the second
half runs a real server and uses clients nobody here wrote (Authlib, requests-oauthlib),
plus a browser-like requests session for the login and consent pages.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from requests_oauthlib import OAuth2Session as RequestsOAuthSession

from keyfob.oauth import rfc6749, rfc7636
from keyfob.oauth.clients import register_app
from keyfob.oauth.errors import OAuthError
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Client, User
from keyfob.tokens import hash_token
from tests.oauth_browser import consent, hidden, in_store, logged_in_browser, register
from tests.support import KeyfobServer, both_databases

WEB = "https://app.example/cb"
LOOP = "http://127.0.0.1/cb"
SETTINGS = Settings(public_url="https://kf.example")


# --------------------------------------------------------------------------------------
# Protocol layer


@pytest.fixture
async def store(tmp_path: Path, database_url: str | None) -> AsyncIterator[Store]:
    s = await Store.open(database_url or "sqlite+aiosqlite:///" + str(tmp_path / "k.db"))
    yield s
    await s.close()


@pytest.fixture
async def owner(store: Store) -> User:
    return await store.users.create("owner", "not-a-real-hash", is_owner=True)


@pytest.fixture
async def public(store: Store) -> Client:
    client, _ = await register_app(store, name="Public", redirect_uris=[WEB, LOOP], public=True)
    return client


@pytest.fixture
async def confidential(store: Store) -> tuple[Client, str]:
    client, secret = await register_app(store, name="Server app", redirect_uris=[WEB], public=False)
    assert secret is not None
    return client, secret


def verifier_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, rfc7636.s256(verifier)


def auth_params(
    client_id: str, challenge: str, redirect_uri: str = WEB, **extra: str
) -> list[tuple[str, str]]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "xyz",
        **extra,
    }
    return [(k, v) for k, v in params.items() if v != "<omit>"]


async def get_code(
    store: Store,
    user: User,
    client: Client,
    challenge: str,
    redirect_uri: str = WEB,
    now: float | None = None,
) -> str:
    areq = await rfc6749.validate_authorization_request(
        store, auth_params(client.id, challenge, redirect_uri)
    )
    grant = await store.grants.upsert(
        user_id=user.id, client_id=client.id, models=["p/m"], cap_micro_usd=5_000_000
    )
    return await rfc6749.issue_code(
        store, SETTINGS, areq, user_id=user.id, grant_id=grant.id, now=now or time.time()
    )


async def exchange(
    store: Store,
    client_id: str,
    code: str,
    verifier: str,
    redirect_uri: str = WEB,
    authorization: str | None = None,
    now: float | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, object]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        "client_id": client_id,
        **(extra or {}),
    }
    return await rfc6749.token_request(
        store, SETTINGS, list(form.items()), authorization, now or time.time()
    )


async def refresh(store: Store, client_id: str, token: str) -> dict[str, object]:
    form = [("grant_type", "refresh_token"), ("refresh_token", token), ("client_id", client_id)]
    return await rfc6749.token_request(store, SETTINGS, form, None, time.time())


async def is_live(store: Store, access_token: object) -> bool:
    assert isinstance(access_token, str)
    return (
        await store.tokens.active_with_grant(hash_token(access_token), "access", time.time())
        is not None
    )


async def test_code_flow_issues_hashed_tokens(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    body = await exchange(store, public.id, code, verifier)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == SETTINGS.access_token_ttl_s
    assert str(body["access_token"]).startswith("kfat_")
    assert str(body["refresh_token"]).startswith("kfrt_")
    assert await is_live(store, body["access_token"])
    # only the hash is stored
    assert await store.tokens.get(str(body["access_token"])) is None
    stored = await store.tokens.get(hash_token(str(body["access_token"])))
    assert stored is not None and stored.family_id == hash_token(code)


@both_databases
async def test_code_reuse_revokes_its_tokens(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    body = await exchange(store, public.id, code, verifier)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, verifier)
    assert err.value.error == "invalid_grant"
    assert not await is_live(store, body["access_token"])
    with pytest.raises(OAuthError):
        await refresh(store, public.id, str(body["refresh_token"]))


async def test_code_of_client_a_refused_for_client_b(
    store: Store, owner: User, public: Client
) -> None:
    other, _ = await register_app(store, name="Other", redirect_uris=[WEB], public=True)
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(store, other.id, code, verifier)
    assert err.value.error == "invalid_grant"


async def test_wrong_redirect_uri(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, verifier, redirect_uri=LOOP)
    assert err.value.error == "invalid_grant"


async def test_loopback_code_needs_the_same_port(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge, "http://127.0.0.1:4321/cb")
    with pytest.raises(OAuthError):
        await exchange(store, public.id, code, verifier, redirect_uri="http://127.0.0.1:4322/cb")
    code = await get_code(store, owner, public, challenge, "http://127.0.0.1:4321/cb")
    body = await exchange(store, public.id, code, verifier, redirect_uri="http://127.0.0.1:4321/cb")
    assert await is_live(store, body["access_token"])


async def test_wrong_or_missing_verifier(store: Store, owner: User, public: Client) -> None:
    _, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, verifier_pair()[0])
    assert err.value.error == "invalid_grant"
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, "")
    assert err.value.error == "invalid_request"


async def test_expired_code(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(
            store, public.id, code, verifier, now=time.time() + SETTINGS.auth_code_ttl_s + 1
        )
    assert err.value.error == "invalid_grant"


async def test_revoked_grant_code_refused(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    grant = await store.grants.active_for(owner.id, public.id)
    assert grant is not None
    await store.grants.revoke(grant.id)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, verifier)
    assert err.value.error == "invalid_grant"


@both_databases
async def test_refresh_rotation_and_replay_revokes_family(
    store: Store, owner: User, public: Client
) -> None:
    verifier, challenge = verifier_pair()
    first = await exchange(
        store, public.id, await get_code(store, owner, public, challenge), verifier
    )
    second = await refresh(store, public.id, str(first["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    assert await is_live(store, second["access_token"])
    third = await refresh(store, public.id, str(second["refresh_token"]))
    # replay of an already rotated refresh token: the whole family ends
    with pytest.raises(OAuthError) as err:
        await refresh(store, public.id, str(first["refresh_token"]))
    assert err.value.error == "invalid_grant"
    for body in (first, second, third):
        assert not await is_live(store, body["access_token"])
    with pytest.raises(OAuthError):
        await refresh(store, public.id, str(third["refresh_token"]))


@both_databases
async def test_refresh_token_bound_to_client(store: Store, owner: User, public: Client) -> None:
    other, _ = await register_app(store, name="Other", redirect_uris=[WEB], public=True)
    verifier, challenge = verifier_pair()
    body = await exchange(
        store, public.id, await get_code(store, owner, public, challenge), verifier
    )
    with pytest.raises(OAuthError) as err:
        await refresh(store, other.id, str(body["refresh_token"]))
    assert err.value.error == "invalid_grant"
    # an access token is not a refresh token
    with pytest.raises(OAuthError):
        await refresh(store, public.id, str(body["access_token"]))


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def test_confidential_client_basic_and_post(
    store: Store, owner: User, confidential: tuple[Client, str]
) -> None:
    client, secret = confidential
    verifier, challenge = verifier_pair()
    body = await exchange(
        store,
        client.id,
        await get_code(store, owner, client, challenge),
        verifier,
        authorization=basic(client.id, secret),
    )
    assert await is_live(store, body["access_token"])
    body = await exchange(
        store,
        client.id,
        await get_code(store, owner, client, challenge),
        verifier,
        extra={"client_secret": secret},
    )
    assert await is_live(store, body["access_token"])


@pytest.mark.parametrize("how", ["no secret", "wrong basic", "wrong post", "bad header"])
async def test_confidential_client_must_authenticate(
    store: Store, owner: User, confidential: tuple[Client, str], how: str
) -> None:
    client, secret = confidential
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, client, challenge)
    extra: dict[str, str] = {}
    authorization = None
    if how == "wrong basic":
        authorization = basic(client.id, secret + "x")
    elif how == "wrong post":
        extra["client_secret"] = secret[:-1]
    elif how == "bad header":
        authorization = "Basic !!!"
    with pytest.raises(OAuthError) as err:
        await exchange(store, client.id, code, verifier, authorization=authorization, extra=extra)
    assert err.value.error == "invalid_client" and err.value.status == 401


async def test_two_auth_methods_refused(
    store: Store, owner: User, confidential: tuple[Client, str]
) -> None:
    client, secret = confidential
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, client, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(
            store,
            client.id,
            code,
            verifier,
            authorization=basic(client.id, secret),
            extra={"client_secret": secret},
        )
    assert err.value.error == "invalid_request"


async def test_public_client_with_secret_refused(store: Store, owner: User, public: Client) -> None:
    verifier, challenge = verifier_pair()
    code = await get_code(store, owner, public, challenge)
    with pytest.raises(OAuthError) as err:
        await exchange(store, public.id, code, verifier, extra={"client_secret": "kfcs_guess"})
    assert err.value.error == "invalid_client"


@pytest.mark.parametrize(
    ("grant_type", "error"),
    [
        ("password", "unsupported_grant_type"),
        ("client_credentials", "unsupported_grant_type"),
        ("implicit", "unsupported_grant_type"),
        ("", "invalid_request"),
    ],
)
async def test_grant_types(store: Store, public: Client, grant_type: str, error: str) -> None:
    form = [
        ("grant_type", grant_type),
        ("client_id", public.id),
        ("username", "owner"),
        ("password", "x"),
    ]
    with pytest.raises(OAuthError) as err:
        await rfc6749.token_request(store, SETTINGS, form, None, time.time())
    assert err.value.error == error


async def test_repeated_token_parameters(store: Store, public: Client) -> None:
    form = [
        ("grant_type", "authorization_code"),
        ("code", "a"),
        ("code", "b"),
        ("client_id", public.id),
    ]
    with pytest.raises(OAuthError) as err:
        await rfc6749.token_request(store, SETTINGS, form, None, time.time())
    assert err.value.error == "invalid_request"


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "kfapp_unknown"},
        {"client_id": "<omit>"},
        {"redirect_uri": "<omit>"},
        {"redirect_uri": "https://evil.test/cb"},
        {"redirect_uri": WEB + "/x"},
        {"redirect_uri": "javascript:alert(1)"},
        {"redirect_uri": "http://127.0.0.1.evil.test/cb"},
    ],
)
async def test_errors_before_redirect_validation_are_not_redirectable(
    store: Store, public: Client, change: dict[str, str]
) -> None:
    _, challenge = verifier_pair()
    params = dict(auth_params(public.id, challenge))
    params.update(change)
    with pytest.raises(OAuthError) as err:
        await rfc6749.validate_authorization_request(
            store, [(k, v) for k, v in params.items() if v != "<omit>"]
        )
    assert err.value.redirect_uri is None


async def test_repeated_client_id_is_not_redirectable(store: Store, public: Client) -> None:
    _, challenge = verifier_pair()
    params = [*auth_params(public.id, challenge), ("client_id", public.id)]
    with pytest.raises(OAuthError) as err:
        await rfc6749.validate_authorization_request(store, params)
    assert err.value.redirect_uri is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "<omit>"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": "<omit>"}, "invalid_request"),
        ({"code_challenge": "<omit>"}, "invalid_request"),
        ({"keyfob_cap_usd": "lots"}, "invalid_request"),
        ({"scope": 'bad"scope'}, "invalid_scope"),
        ({"request_uri": "https://x.test/r"}, "request_uri_not_supported"),
    ],
)
async def test_later_errors_are_redirected(
    store: Store, public: Client, change: dict[str, str], error: str
) -> None:
    _, challenge = verifier_pair()
    params = dict(auth_params(public.id, challenge))
    params.update(change)
    with pytest.raises(OAuthError) as err:
        await rfc6749.validate_authorization_request(
            store, [(k, v) for k, v in params.items() if v != "<omit>"]
        )
    assert err.value.error == error
    assert err.value.redirect_uri == WEB and err.value.state == "xyz"
    location = rfc6749.error_redirect(err.value, SETTINGS.issuer)
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error] and query["state"] == ["xyz"]
    assert query["iss"] == [SETTINGS.issuer]


async def test_suggested_cap(store: Store, public: Client) -> None:
    _, challenge = verifier_pair()
    areq = await rfc6749.validate_authorization_request(
        store, auth_params(public.id, challenge, keyfob_cap_usd="2.50")
    )
    assert areq.suggested_cap_micro_usd == 2_500_000
    again = await rfc6749.validate_authorization_request(store, areq.as_query())
    assert again == areq


# --------------------------------------------------------------------------------------
# Real server, real clients


def test_authlib_public_client_flow_with_refresh(server: KeyfobServer) -> None:
    client_id, _ = register(server, [LOOP])
    redirect_uri = "http://127.0.0.1:53682/cb"  # ephemeral loopback port (RFC 8252 7.3)
    verifier = secrets.token_urlsafe(64)
    with (
        logged_in_browser(server) as browser,
        AuthlibSession(
            client_id,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        ) as oauth,
    ):
        url, state = oauth.create_authorization_url(
            server.url + "/oauth/authorize", code_verifier=verifier
        )
        location = consent(browser, url)
        query = parse_qs(urlsplit(location).query)
        assert location.startswith(redirect_uri + "?")
        assert query["state"] == [state]
        assert query["iss"] == [server.url]
        token = oauth.fetch_token(
            server.url + "/oauth/token", authorization_response=location, code_verifier=verifier
        )
        assert token["token_type"] == "Bearer"
        assert token["access_token"].startswith("kfat_")
        refreshed = oauth.refresh_token(
            server.url + "/oauth/token", refresh_token=token["refresh_token"]
        )
        assert refreshed["access_token"] != token["access_token"]
        assert refreshed["refresh_token"] != token["refresh_token"]


def test_authlib_confidential_client_secret_post(server: KeyfobServer) -> None:
    redirect_uri = "https://app.example/cb"
    client_id, secret = register(server, [redirect_uri], public=False)
    verifier = secrets.token_urlsafe(64)
    with (
        logged_in_browser(server) as browser,
        AuthlibSession(
            client_id,
            secret,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_post",
        ) as oauth,
    ):
        url, state = oauth.create_authorization_url(
            server.url + "/oauth/authorize", code_verifier=verifier, state="s t/å?&="
        )
        assert state == "s t/å?&="
        location = consent(browser, url)
        assert parse_qs(urlsplit(location).query)["state"] == [state]
        token = oauth.fetch_token(
            server.url + "/oauth/token", authorization_response=location, code_verifier=verifier
        )
        assert token["access_token"].startswith("kfat_")


def test_requests_oauthlib_basic_auth_flow(
    server: KeyfobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the token endpoint is loopback
    redirect_uri = "https://app.example/cb"
    client_id, secret = register(server, [redirect_uri], public=False)
    with (
        logged_in_browser(server) as browser,
        RequestsOAuthSession(client_id, redirect_uri=redirect_uri, pkce="S256") as oauth,
    ):
        url, state = oauth.authorization_url(server.url + "/oauth/authorize")
        location = consent(browser, url)
        assert parse_qs(urlsplit(location).query)["state"] == [state]
        token = oauth.fetch_token(
            server.url + "/oauth/token", authorization_response=location, client_secret=secret
        )  # client_secret_basic
        assert token["access_token"].startswith("kfat_")
        refreshed = oauth.refresh_token(
            server.url + "/oauth/token",
            refresh_token=token["refresh_token"],
            auth=(client_id, secret),
        )
        assert refreshed["access_token"] != token["access_token"]


def test_requests_oauthlib_public_client(
    server: KeyfobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    client_id, _ = register(server, [LOOP])
    with (
        logged_in_browser(server) as browser,
        RequestsOAuthSession(
            client_id, redirect_uri="http://127.0.0.1:40123/cb", pkce="S256"
        ) as oauth,
    ):
        url, _state = oauth.authorization_url(server.url + "/oauth/authorize")
        location = consent(browser, url)
        token = oauth.fetch_token(
            server.url + "/oauth/token", authorization_response=location, include_client_id=True
        )
        assert token["access_token"].startswith("kfat_")


def _authorize_url(
    server: KeyfobServer, client_id: str, redirect_uri: str, challenge: str, **extra: str
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-123",
        **extra,
    }
    return (
        server.url
        + "/oauth/authorize?"
        + urlencode({k: v for k, v in params.items() if v != "<omit>"})
    )


def _post_token(server: KeyfobServer, data: dict[str, str]) -> requests.Response:
    return requests.post(server.url + "/oauth/token", data=data, timeout=10)


def test_http_code_reuse_revokes_tokens(server: KeyfobServer) -> None:
    client_id, _ = register(server, [WEB])
    verifier, challenge = verifier_pair()
    with logged_in_browser(server) as browser:
        location = consent(browser, _authorize_url(server, client_id, WEB, challenge))
    code = parse_qs(urlsplit(location).query)["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": WEB,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    first = _post_token(server, form)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    access = first.json()["access_token"]
    second = _post_token(server, form)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert second.headers["cache-control"] == "no-store"

    async def live(store: Store) -> bool:
        return (
            await store.tokens.active_with_grant(hash_token(access), "access", time.time())
            is not None
        )

    assert in_store(server, live) is False


def test_http_refresh_replay_revokes_family(server: KeyfobServer) -> None:
    client_id, _ = register(server, [WEB])
    verifier, challenge = verifier_pair()
    with logged_in_browser(server) as browser:
        location = consent(browser, _authorize_url(server, client_id, WEB, challenge))
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = _post_token(
        server,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": WEB,
            "code_verifier": verifier,
            "client_id": client_id,
        },
    ).json()
    old = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client_id,
    }
    new = _post_token(server, old)
    assert new.status_code == 200
    replay = _post_token(server, old)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    after = _post_token(server, {**old, "refresh_token": new.json()["refresh_token"]})
    assert after.status_code == 400


def test_http_token_endpoint_errors(server: KeyfobServer) -> None:
    redirect_uri = "https://app.example/cb"
    client_id, secret = register(server, [redirect_uri], public=False)
    bad = requests.post(
        server.url + "/oauth/token",
        auth=(client_id, "wrong"),
        data={
            "grant_type": "authorization_code",
            "code": "kfac_x",
            "redirect_uri": redirect_uri,
            "code_verifier": "x" * 43,
        },
        timeout=10,
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers["www-authenticate"].startswith("Basic")
    assert secret is not None and secret not in bad.text
    password = _post_token(
        server,
        {
            "grant_type": "password",
            "username": "owner",
            "password": "x",
            "client_id": client_id,
            "client_secret": secret,
        },
    )
    assert password.status_code == 400
    assert password.json()["error"] == "unsupported_grant_type"
    as_json = requests.post(
        server.url + "/oauth/token", json={"grant_type": "refresh_token"}, timeout=10
    )
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    huge = requests.post(server.url + "/oauth/token", data={"x": "a" * 70_000}, timeout=10)
    assert huge.status_code == 413 and huge.json()["error"] == "invalid_request"
    garbage = requests.post(
        server.url + "/oauth/token",
        data=b"\xff\xfe=%ff",
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert garbage.status_code == 400


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.test/cb",
        "http://127.0.0.1.evil.test/cb",
        "http://127.0.0.1@evil.test/cb",
        "https://app.example/cb/other",
        "https://app.example/cb?extra=1",
        "javascript:alert(1)",
        "https://app.example/cb#frag",
    ],
)
def test_http_redirect_tricks_not_redirected(server: KeyfobServer, redirect_uri: str) -> None:
    client_id, _ = register(server, ["https://app.example/cb", LOOP])
    _, challenge = verifier_pair()
    with logged_in_browser(server) as browser:
        response = browser.get(
            _authorize_url(server, client_id, redirect_uri, challenge),
            allow_redirects=False,
            timeout=10,
        )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "redirect_uri" in response.text


def test_http_unknown_client_not_redirected(server: KeyfobServer) -> None:
    _, challenge = verifier_pair()
    response = requests.get(
        _authorize_url(server, "kfapp_nope", "https://evil.test/cb", challenge),
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "<omit>", "code_challenge_method": "<omit>"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
def test_http_later_errors_redirect_with_state_and_iss(
    server: KeyfobServer, change: dict[str, str], error: str
) -> None:
    client_id, _ = register(server, [WEB])
    _, challenge = verifier_pair()
    response = requests.get(
        _authorize_url(server, client_id, WEB, challenge, **change),
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(WEB + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error]
    assert query["state"] == ["st-123"]
    assert query["iss"] == [server.url]
    assert "code" not in query


def test_http_deny(server: KeyfobServer) -> None:
    client_id, _ = register(server, [WEB])
    _, challenge = verifier_pair()
    with logged_in_browser(server) as browser:
        location = consent(
            browser, _authorize_url(server, client_id, WEB, challenge), action="deny"
        )
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st-123"]
    assert "code" not in query


def test_http_not_logged_in_goes_to_login(server: KeyfobServer) -> None:
    client_id, _ = register(server, [WEB])
    _, challenge = verifier_pair()
    url = _authorize_url(server, client_id, WEB, challenge)
    with requests.Session() as browser:
        response = browser.get(url, allow_redirects=False, timeout=10)
        assert response.status_code in (302, 303)
        location = response.headers["location"]
        assert location.startswith("/login?next=%2Foauth%2Fauthorize%3F")
        page = browser.get(server.url + location, timeout=10)
        nxt = hidden(page.text, "next")
        assert nxt == url[len(server.url) :]
        # logging in brings the person back to the consent page
        login = browser.post(
            server.url + "/login",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "username": "owner",
                "password": "correct horse battery staple",
                "next": nxt,
            },
            allow_redirects=False,
            timeout=10,
        )
        assert login.status_code == 303 and login.headers["location"] == nxt
