"""CORS for browser-only apps, attacked: foreign and ``null`` origins refused before any
work, credentials never allowed, ``*`` only on public documents, preflights that allow
only what the endpoints accept, and everything outside the CORS paths same-origin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyfob.cors import policy
from keyfob.store.records import Client
from keyfob.tokens import hash_token
from tests.oauth_app import InProcess, pkce, query_of
from tests.support import both_databases

APP = "http://127.0.0.1:5173"
CB = APP + "/callback"
FOREIGN = "http://127.0.0.1:6666"


@pytest.fixture
def kf(tmp_path: Path, database_url: str | None) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", database_url=database_url) as app:
        yield app


def no_cors(answer: httpx.Response) -> None:
    assert "access-control-allow-origin" not in answer.headers, dict(answer.headers)
    assert "access-control-allow-credentials" not in answer.headers


def allows(answer: httpx.Response, origin: str) -> None:
    assert answer.headers["access-control-allow-origin"] == origin, dict(answer.headers)
    assert "access-control-allow-credentials" not in answer.headers
    assert "origin" in answer.headers["vary"].lower()


def code_for(kf: InProcess, client_id: str, redirect_uri: str = CB) -> tuple[str, str]:
    verifier, challenge = pkce()
    location = kf.logged_in().approve(kf.authorize_url(client_id, redirect_uri, challenge))
    return query_of(location)["code"], verifier


def exchange(
    kf: InProcess, client_id: str, code: str, verifier: str, origin: str | None
) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    return kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CB,
            "code_verifier": verifier,
            "client_id": client_id,
        },
        headers=headers,
    )


# --- discovery: public documents ----------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource"]
)
def test_discovery_is_readable_by_any_origin_without_credentials(kf: InProcess, path: str) -> None:
    for origin in (FOREIGN, "null", None):
        answer = kf.client.get(path, headers={"Origin": origin} if origin else {})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers
    pre = kf.client.options(
        path,
        headers={
            "Origin": FOREIGN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "mcp-protocol-version",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert pre.headers["access-control-allow-headers"] == "mcp-protocol-version"
    assert "access-control-allow-credentials" not in pre.headers
    # a 404 under /.well-known is readable too: discovery clients try several paths
    missing = kf.client.get("/.well-known/openid-configuration", headers={"Origin": FOREIGN})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"


# --- the token endpoint -------------------------------------------------------------


@both_databases
def test_token_from_the_apps_own_origin(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    code, verifier = code_for(kf, cid)
    answer = exchange(kf, cid, code, verifier, APP)
    assert answer.status_code == 200, answer.text
    allows(answer, APP)
    refreshed = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": answer.json()["refresh_token"],
            "client_id": cid,
        },
        headers={"Origin": APP},
    )
    assert refreshed.status_code == 200
    allows(refreshed, APP)


@pytest.mark.parametrize(
    "origin",
    [
        FOREIGN,  # another port of the same host
        "http://localhost:5173",  # same port, another host name
        "https://127.0.0.1:5173",  # another scheme
        "null",  # sandboxed frames, file: pages
        "http://127.0.0.1:5173/callback",  # not an origin
        "http://127.0.0.1:5173.evil.example",
        "http://user@127.0.0.1:5173",
    ],
)
def test_token_from_a_foreign_origin_is_refused_before_the_code_is_used(
    kf: InProcess, origin: str
) -> None:
    cid, _ = kf.register([CB])
    code, verifier = code_for(kf, cid)
    refused = exchange(kf, cid, code, verifier, origin)
    assert refused.status_code == 403
    assert refused.json()["error"] == "unauthorized_client"
    no_cors(refused)
    # the code was not consumed (codes are single-use, reuse revokes): the app still works
    answer = exchange(kf, cid, code, verifier, APP)
    assert answer.status_code == 200, answer.text


def test_a_confidential_client_never_gets_cors(kf: InProcess) -> None:
    cid, secret = kf.register([CB], public=False)
    answer = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": cid,
            "client_secret": str(secret),
        },
        headers={"Origin": APP},
    )
    assert answer.status_code == 403  # its secret must never be in a page
    no_cors(answer)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=refresh_token&refresh_token=x",  # no client_id
        b"client_id=a&client_id=b",  # two of them
        b"client_id=%ff",  # not UTF-8
        b"client_id=kfapp_unknown",
        b"client_id=" + b"a" * 70_000,  # over the form limit
    ],
)
def test_token_without_a_known_client_is_refused(kf: InProcess, body: bytes) -> None:
    answer = kf.client.post(
        "/oauth/token",
        content=body,
        headers={"Origin": APP, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 403
    no_cors(answer)


def test_preflights_of_the_token_endpoint(kf: InProcess) -> None:
    def pre(method: str, headers: str, origin: str = APP) -> httpx.Response:
        return kf.client.options(
            "/oauth/token",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )

    ok = pre("POST", "content-type")
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == APP
    assert ok.headers["access-control-allow-methods"] == "POST"
    assert "access-control-allow-credentials" not in ok.headers
    # a public client has no secret: no Authorization header, no other method, no null
    for refused in (pre("POST", "authorization"), pre("PUT", ""), pre("POST", "", "null")):
        assert refused.status_code == 403
        no_cors(refused)


def test_revocation_from_the_apps_origin_only(kf: InProcess) -> None:
    cid, _ = kf.register([CB])
    code, verifier = code_for(kf, cid)
    tokens = exchange(kf, cid, code, verifier, APP).json()
    form = {"token": tokens["access_token"], "client_id": cid}
    foreign = kf.client.post("/oauth/revoke", data=form, headers={"Origin": FOREIGN})
    assert foreign.status_code == 403
    no_cors(foreign)
    found = kf.run(
        kf.store.tokens.active_with_grant, hash_token(tokens["access_token"]), "access", time.time()
    )
    assert found is not None  # a foreign page cannot log the app out either
    own = kf.client.post("/oauth/revoke", data=form, headers={"Origin": APP})
    assert own.status_code == 200
    allows(own, APP)


# --- the gateway ---------------------------------------------------------------------


def signed_in(kf: InProcess) -> str:
    cid, _ = kf.register([CB])
    code, verifier = code_for(kf, cid)
    token: str = exchange(kf, cid, code, verifier, APP).json()["access_token"]
    return token


def test_gateway_answers_the_apps_origin(kf: InProcess) -> None:
    token = signed_in(kf)
    answer = kf.client.get(
        "/v1/models", headers={"Origin": APP, "Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    allows(answer, APP)
    exposed = answer.headers["access-control-expose-headers"]
    for name in ("x-keyfob-cost-usd", "x-keyfob-allowance-left-usd", "retry-after"):
        assert name in exposed
    allowance = kf.client.get(
        "/v1/keyfob/allowance", headers={"Origin": APP, "Authorization": f"Bearer {token}"}
    )
    assert allowance.status_code == 200
    allows(allowance, APP)


@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://127.0.0.1:5173.evil.example"])
def test_gateway_refuses_a_foreign_origin_before_any_work(kf: InProcess, origin: str) -> None:
    token = signed_in(kf)
    for path, method in (
        ("/v1/models", "GET"),
        ("/v1/chat/completions", "POST"),
        ("/v1/messages", "POST"),
    ):
        answer = kf.client.request(
            method,
            path,
            json={"model": "fake/m1", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Origin": origin, "Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 403, (path, answer.text)
        no_cors(answer)
    assert kf.run(kf.store.ledger.entries) == []  # nothing reserved, nothing sent


def test_an_invalid_token_is_readable_so_the_app_can_refresh(kf: InProcess) -> None:
    answer = kf.client.get(
        "/v1/models", headers={"Origin": APP, "Authorization": "Bearer kfat_not-a-token"}
    )
    assert answer.status_code == 401
    allows(answer, APP)
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert "null" not in answer.headers["access-control-allow-origin"]
    refused = kf.client.get(
        "/v1/models", headers={"Origin": "null", "Authorization": "Bearer kfat_not-a-token"}
    )
    assert refused.status_code == 403
    no_cors(refused)


def test_gateway_preflights(kf: InProcess) -> None:
    def pre(headers: str, method: str = "POST", origin: str = APP) -> httpx.Response:
        return kf.client.options(
            "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )

    # what the official SDKs send from a page
    sdk = pre(
        "authorization, content-type, x-stainless-os, x-stainless-retry-count, "
        "anthropic-version, anthropic-dangerous-direct-browser-access, x-api-key"
    )
    assert sdk.status_code == 204
    assert sdk.headers["access-control-allow-origin"] == APP
    assert int(sdk.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in sdk.headers
    for refused in (
        pre("x-evil"),
        pre("cookie"),
        pre("content-type", "DELETE"),
        pre("", origin="null"),
    ):
        assert refused.status_code == 403
        no_cors(refused)


def test_a_public_site_may_ask_for_a_loopback_keyfob(kf: InProcess) -> None:
    """Chromium's Private Network Access preflight: allowed like any other, since the
    actual request is checked against the app's origins all the same."""
    pre = kf.client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-private-network"] == "true"
    plain = kf.client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-private-network" not in plain.headers


def test_same_origin_and_other_paths_get_no_cors(kf: InProcess) -> None:
    own = kf.client.get("/.well-known/oauth-authorization-server", headers={"Origin": kf.url})
    assert own.status_code == 200  # passes through untouched
    for path in ("/login", "/oauth/authorize", "/", "/healthz"):
        answer = kf.client.get(path, headers={"Origin": FOREIGN})
        no_cors(answer)
    for path in ("/oauth/introspect", "/oauth/register", "/oauth/device_authorization", "/login"):
        answer = kf.client.post(path, data={"client_id": "x"}, headers={"Origin": FOREIGN})
        no_cors(answer)
        pre = kf.client.options(
            path, headers={"Origin": FOREIGN, "Access-Control-Request-Method": "POST"}
        )
        no_cors(pre)


# --- the policy, alone -------------------------------------------------------------------


def test_client_origins() -> None:
    def client(uris: tuple[str, ...], public: bool = True, kind: str = "registered") -> Client:
        return Client("https://app.example/kf.json", "A", uris, public, None, 0.0, kind)

    assert policy.client_origins(
        client(("http://127.0.0.1:5173/cb", "https://App.Example:443/x", "com.example.app:/cb"))
    ) == {"http://127.0.0.1:5173", "https://app.example"}
    assert policy.client_origins(client(("http://[::1]:9000/cb",))) == {"http://[::1]:9000"}
    assert policy.client_origins(client(("https://a.example/cb",), public=False)) == frozenset()
    doc = client(("https://cb.example/cb",), kind="metadata_document")
    assert policy.client_origins(doc) == {"https://cb.example", "https://app.example"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
        ("HTTPS://App.Example:443", "https://app.example"),
        ("http://[::1]:80", "http://[::1]"),
        ("null", None),
        ("", None),
        ("file://", None),
        ("chrome-extension://abc", None),
        ("http://a.example/", None),
        ("http://a.example:", None),
        ("http://a.example:99999", None),
        ("http://a .example", None),
        ("http://a.example\r\nx: y", None),
    ],
)
def test_parse_origin(value: str, expected: str | None) -> None:
    assert policy.parse_origin(value) == expected


@given(st.text(max_size=80))
def test_parse_origin_never_raises_and_is_idempotent(value: str) -> None:
    parsed = policy.parse_origin(value)
    if parsed is not None:
        assert policy.parse_origin(parsed) == parsed
        assert "/" not in parsed.split("://", 1)[1]
