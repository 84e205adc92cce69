"""The OAuth 2.0 Security BCP (RFC 9700), attack by attack, plus the published
redirect-URI advisories of Keycloak, Authlib, fosite and oauthlib as regression tests.

Everything runs in process against the real app (routes, store, session middleware).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from keyfob.tokens import hash_token
from tests.oauth_app import InProcess, hidden, pkce, query_of
from tests.support import both_databases

WEB = "https://app.example/cb"
LOOP = "http://127.0.0.1/cb"
LOCAL = "http://localhost/cb"


@pytest.fixture
def kf(tmp_path: Path, database_url: str | None) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", database_url=database_url) as app:
        yield app


@pytest.fixture
def app_id(kf: InProcess) -> str:
    cid, _ = kf.register([WEB, LOOP, LOCAL, "com.example.app:/cb"])
    return cid


def authorize(kf: InProcess, **params: str) -> tuple[int, str | None]:
    answer = kf.client.get("/oauth/authorize?" + urlencode(params))
    return answer.status_code, answer.headers.get("location")


def good(cid: str, redirect_uri: str = WEB, **extra: str) -> dict[str, str]:
    _, challenge = pkce()
    return {
        "response_type": "code",
        "client_id": cid,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s1",
        **extra,
    }


def assert_shown_not_redirected(kf: InProcess, params: dict[str, str]) -> None:
    status, location = authorize(kf, **params)
    assert status == 400 and location is None, (params, status, location)


# --- open redirectors (RFC 9700 4.1, 4.11; RFC 6749 4.1.2.1) --------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "http://127.0.0.1.evil.test/cb",
        "http://localhost.evil.test/cb",
        "https://app.example.evil.test/cb",
        "https://app.example/cb.evil.test",
        "http://localhost:8080.evil.test/cb",
    ],
)
def test_cve_2024_8883_prefix_tricks(kf: InProcess, app_id: str, evil: str) -> None:
    """CVE-2024-8883 (Keycloak): a loopback or host registration matched by a longer
    host such as ``localhost.evil.test``. Exact matching refuses every one, as a page."""
    kf.logged_in()
    assert_shown_not_redirected(kf, good(app_id, evil))


@pytest.mark.parametrize(
    "evil",
    [
        "http://127.0.0.1:4000/cb?next=https://evil.test",
        "http://127.0.0.1:4000/cb?",
        "http://127.0.0.1:4000/cb#x",
        "http://127.0.0.1:4000/cb/../evil",
        "http://127.0.0.1:4000/CB",
        "HTTP://127.0.0.1:4000/cb",
        "http://[::1]:4000/cb",
        "http://localhost:4000/cb",
        "https://127.0.0.1:4000/cb",
    ],
)
def test_cve_2020_15233_loopback_query_tricks(kf: InProcess, app_id: str, evil: str) -> None:
    """CVE-2020-15233 (fosite): the RFC 8252 loopback port exception let other parts of
    the URI vary (query parameters, case). Only the port of an IP literal may vary."""
    kf.logged_in()
    assert_shown_not_redirected(kf, good(app_id, evil))
    # the port really may vary
    status, location = authorize(kf, **good(app_id, "http://127.0.0.1:4000/cb"))
    assert status == 200 and location is None


@pytest.mark.parametrize(
    "evil",
    [
        "https://app.example@evil.test/cb",
        "https://app.example:443@evil.test/cb",
        "https://evil.test\\@app.example/cb",
        "https://app.example/cb/..;/evil",
        "https://app.example/cb/../evil",
        "https://app.example/cb/%2e%2e/evil",
        "https://app.example/cb%2f..%2fevil",
        "https://app.example//evil.test/cb",
        "https://APP.example/cb",
        "https://app.example/cb ",
        "javascript:alert(1)//https://app.example/cb",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "DATA:text/html;base64,PHNjcmlwdD4=",
        "com.example.app:/cb/../x",
        "com.example.app://cb",
    ],
)
def test_userinfo_path_and_scheme_tricks(kf: InProcess, app_id: str, evil: str) -> None:
    """Userinfo ``@``, ``..;/`` (servlet path parameters), encoded dot segments, case,
    ``javascript:``/``data:`` in any case: none matches a registration, none redirects."""
    kf.logged_in()
    assert_shown_not_redirected(kf, good(app_id, evil))


@pytest.mark.parametrize(
    "uri",
    [
        "JaVaScRiPt:alert(1)",
        "javascript:alert(1)",
        "DATA:text/html,x",
        "data:text/html,x",
        "vbscript:x",
        "https://user@app.example/cb",
        "https://app.example/*",
        "https://*.app.example/cb",
        "http://evil.test/cb",
        "https://app.example/cb#frag",
    ],
)
def test_dangerous_redirect_uris_cannot_be_registered(kf: InProcess, uri: str) -> None:
    answer = kf.client.post("/oauth/register", json={"client_name": "x", "redirect_uris": [uri]})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "broken",
    [
        "http://[::1",
        "https://[evil.test/cb",
        "https://app.example]/cb",
        "http://[::1]:99999/cb",
        "http://127.0.0.1:-1/cb",
        "http://[::1]:abc/cb",
        "https://[0:0:0:0:0:0:0:1%25eth0]/cb",
    ],
)
def test_cve_2022_36087_malformed_ipv6_is_no_500(kf: InProcess, app_id: str, broken: str) -> None:
    """CVE-2022-36087 (oauthlib): a malformed IPv6 redirect_uri crashed the URI parser
    (a denial of service). Here it is an ordinary refusal, shown as a page."""
    kf.logged_in()
    assert_shown_not_redirected(kf, good(app_id, broken))
    answer = kf.client.post("/oauth/register", json={"client_name": "x", "redirect_uris": [broken]})
    assert answer.status_code == 400


@pytest.mark.parametrize(
    "changes",
    [
        {"response_type": "token"},
        {"response_type": "id_token"},
        {"code_challenge_method": "plain"},
        {"scope": 'bad"'},
    ],
)
def test_cve_2026_41479_errors_never_go_to_an_unregistered_uri(
    kf: InProcess, app_id: str, changes: dict[str, str]
) -> None:
    """CVE-2026-41479 / CVE-2026-44681 (Authlib, GHSA-r95x-qfjj-fjj2): an error such as
    unsupported_response_type was redirected to the attacker's redirect_uri before it was
    validated. Errors only go to a registered URI; otherwise the person sees a page."""
    assert_shown_not_redirected(kf, good(app_id, "https://evil.test/steal", **changes))
    assert_shown_not_redirected(kf, good("kfapp_unknown", "https://evil.test/steal", **changes))
    status, location = authorize(kf, **good(app_id, WEB, **changes))
    assert status == 302 and location is not None and location.startswith(WEB + "?")
    assert query_of(location)["iss"] == kf.url


def test_missing_redirect_uri_and_client_shown(kf: InProcess, app_id: str) -> None:
    params = good(app_id)
    del params["redirect_uri"]
    assert_shown_not_redirected(kf, params)
    params = good(app_id)
    del params["client_id"]
    assert_shown_not_redirected(kf, params)


# --- no implicit, no password grant (RFC 9700 2.1.2, 2.4) ----------------------------


def test_no_implicit_no_password_no_client_credentials(kf: InProcess, app_id: str) -> None:
    status, location = authorize(kf, **good(app_id, response_type="token"))
    assert status == 302 and location is not None
    assert query_of(location)["error"] == "unsupported_response_type"
    for grant_type in ("password", "client_credentials", "implicit"):
        answer = kf.client.post(
            "/oauth/token",
            data={
                "grant_type": grant_type,
                "client_id": app_id,
                "username": "owner",
                "password": "x",
            },
        )
        assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


# --- PKCE (RFC 9700 2.1.1, 4.8) --------------------------------------------------------


def test_pkce_downgrade_refused(kf: InProcess, app_id: str) -> None:
    """plain and a missing challenge are refused, so every code has a S256 challenge and
    a verifier can never stand in for a challenge that was not sent (4.8.2)."""
    kf.logged_in()
    for changes in ({"code_challenge_method": "plain"}, {"code_challenge_method": ""}):
        status, location = authorize(kf, **good(app_id, **changes))
        assert status == 302 and location is not None
        assert query_of(location)["error"] == "invalid_request"
    params = good(app_id)
    del params["code_challenge"], params["code_challenge_method"]
    status, location = authorize(kf, **params)
    assert location is not None and query_of(location)["error"] == "invalid_request"


def exchange(kf: InProcess, cid: str, code: str, verifier: str, redirect_uri: str = WEB) -> object:
    return kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": cid,
        },
    )


def get_code(kf: InProcess, cid: str, redirect_uri: str = WEB) -> tuple[str, str]:
    verifier, challenge = pkce()
    location = kf.logged_in().approve(kf.authorize_url(cid, redirect_uri, challenge))
    return query_of(location)["code"], verifier


def test_code_injection_needs_the_verifier(kf: InProcess, app_id: str) -> None:
    """A stolen code injected into another session fails without its verifier (4.5)."""
    code, _verifier = get_code(kf, app_id)
    _, other_verifier = pkce()
    answer = exchange(kf, app_id, code, other_verifier)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"  # type: ignore[attr-defined]


# --- authorization codes (RFC 9700 4.2.4, 4.5; RFC 6749 4.1.2) -------------------------


@both_databases
def test_code_single_use_and_reuse_revokes(kf: InProcess, app_id: str) -> None:
    code, verifier = get_code(kf, app_id)
    first = exchange(kf, app_id, code, verifier)
    assert first.status_code == 200  # type: ignore[attr-defined]
    tokens = first.json()  # type: ignore[attr-defined]
    second = exchange(kf, app_id, code, verifier)
    assert second.status_code == 400  # type: ignore[attr-defined]
    for name in ("access_token", "refresh_token"):
        record = kf.run(kf.store.tokens.get, hash_token(tokens[name]))
        assert record is not None and record.revoked_at is not None


def test_code_lives_at_most_60_seconds(kf: InProcess, app_id: str) -> None:
    assert kf.settings.auth_code_ttl_s <= 60
    code, _ = get_code(kf, app_id)
    record = kf.run(kf.store.codes.consume, hash_token(code), time.time())[0]
    assert record is not None and record.expires_at - time.time() <= 60


def test_code_bound_to_client_and_redirect_uri(kf: InProcess, app_id: str) -> None:
    other, _ = kf.register([WEB], name="Other")
    code, verifier = get_code(kf, app_id)
    assert exchange(kf, other, code, verifier).status_code == 400  # type: ignore[attr-defined]
    code, verifier = get_code(kf, app_id, "http://127.0.0.1:5000/cb")
    wrong_port = exchange(kf, app_id, code, verifier, "http://127.0.0.1:5001/cb")
    assert wrong_port.status_code == 400  # type: ignore[attr-defined]


# --- refresh tokens (RFC 9700 4.14.2) --------------------------------------------------


@both_databases
def test_refresh_replay_revokes_family_without_grace(kf: InProcess, app_id: str) -> None:
    tokens = kf.code_flow(app_id, WEB)

    def refresh(token: str) -> object:
        return kf.client.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token, "client_id": app_id},
        )

    rotated = refresh(tokens["refresh_token"])
    assert rotated.status_code == 200  # type: ignore[attr-defined]
    new = rotated.json()  # type: ignore[attr-defined]
    assert new["refresh_token"] != tokens["refresh_token"]
    # replayed at once: no grace period
    replay = refresh(tokens["refresh_token"])
    assert replay.status_code == 400  # type: ignore[attr-defined]
    for token in (tokens["access_token"], new["access_token"], new["refresh_token"]):
        record = kf.run(kf.store.tokens.get, hash_token(token))
        assert record is not None and record.revoked_at is not None
    assert refresh(new["refresh_token"]).status_code == 400  # type: ignore[attr-defined]


# --- tokens (RFC 9700 2.2, 4.10) -------------------------------------------------------


def test_tokens_opaque_prefixed_hashed_short_lived(kf: InProcess, app_id: str) -> None:
    tokens = kf.code_flow(app_id, WEB)
    assert tokens["access_token"].startswith("kfat_") and len(tokens["access_token"]) > 40
    assert tokens["refresh_token"].startswith("kfrt_")
    assert tokens["expires_in"] == 3600
    record = kf.run(kf.store.tokens.get, hash_token(tokens["access_token"]))
    assert record is not None and record.token_hash != tokens["access_token"]
    assert record.expires_at - record.created_at == 3600


def test_client_secrets_stored_hashed(kf: InProcess) -> None:
    cid, secret = kf.register([WEB], public=False)
    assert secret is not None and secret.startswith("kfcs_")
    client = kf.run(kf.store.clients.get, cid)
    assert client is not None and client.secret_hash == hash_token(secret)
    assert secret not in repr(client)


# --- the authorization response (RFC 9700 4.4 mix-up, 4.7 CSRF, 4.11 303) --------------


def test_state_round_trips_and_iss_everywhere(kf: InProcess, app_id: str) -> None:
    state = "a b&c=d/é%20+?#x"
    _, challenge = pkce()
    browser = kf.logged_in()
    url = kf.authorize_url(app_id, WEB, challenge, state=state)
    page = browser.consent_page(url)
    approved = browser.decide(page)
    assert approved.status_code == 303  # a redirect after a POST is a 303 (4.11)
    q = query_of(approved.headers["location"])
    assert q["state"] == state and q["iss"] == kf.url
    denied = browser.decide(browser.consent_page(url), action="deny")
    assert denied.status_code == 303
    q = query_of(denied.headers["location"])
    assert q == {
        "error": "access_denied",
        "error_description": q["error_description"],
        "state": state,
        "iss": kf.url,
    }


def test_consent_needs_csrf_token(kf: InProcess, app_id: str) -> None:
    _, challenge = pkce()
    page = kf.logged_in().consent_page(kf.authorize_url(app_id, WEB, challenge))
    answer = kf.client.post(
        "/oauth/authorize",
        data={"request_id": hidden(page.text, "request_id"), "action": "approve", "cap_usd": "5"},
    )
    assert answer.status_code == 403 and "location" not in answer.headers


def test_consent_cannot_be_fixated_on_another_session(kf: InProcess, app_id: str) -> None:
    """An attacker opens the authorization request in their own session and lures the
    victim into submitting its request id: it is unknown in the victim's session."""
    _, challenge = pkce()
    attacker_page = kf.logged_in().consent_page(kf.authorize_url(app_id, WEB, challenge))
    request_id = hidden(attacker_page.text, "request_id")
    kf.new_session()
    victim = kf.logged_in()
    victim_page = kf.client.get("/")
    answer = victim.http.post(
        "/oauth/authorize",
        data={
            "csrf_token": hidden(victim_page.text, "csrf_token"),
            "request_id": request_id,
            "action": "approve",
            "cap_usd": "5",
            "window": "month",
        },
    )
    assert answer.status_code == 400 and "location" not in answer.headers


def test_consent_page_cannot_be_framed(kf: InProcess, app_id: str) -> None:
    _, challenge = pkce()
    page = kf.logged_in().consent_page(kf.authorize_url(app_id, WEB, challenge))
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_login_is_rate_limited(kf: InProcess) -> None:
    browser = kf.browser()
    statuses = [browser.login(password="wrong password!").status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429
