"""The person's pages on a real server: setup, login, CSRF, consent choices, dashboard,
revoke, app registration. Forms are posted as a browser would."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from keyfob.oauth import rfc7636
from keyfob.store import Store
from keyfob.store.records import Grant
from keyfob.tokens import hash_token
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.oauth_browser import (
    checkboxes,
    consent,
    hidden,
    in_store,
    logged_in_browser,
    login,
    register,
    seed_provider,
)
from tests.support import KeyfobServer

WEB = "https://app.example/cb"


def authorize_url(server: KeyfobServer, client_id: str, **extra: str) -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": WEB,
        "code_challenge": rfc7636.s256(verifier),
        "code_challenge_method": "S256",
        "state": "abc",
        **extra,
    }
    return server.url + "/oauth/authorize?" + urlencode(params), verifier


def grants_of(server: KeyfobServer, client_id: str) -> list[Grant]:
    async def go(store: Store) -> list[Grant]:
        owner = await store.users.owner()
        assert owner is not None
        return [
            g
            for g in await store.grants.list(owner.id, include_revoked=True)
            if g.client_id == client_id
        ]

    result: list[Grant] = in_store(server, go)
    return result


def setup_link(server: KeyfobServer) -> str:
    """The one-time /setup link ``keyfob serve`` printed in its terminal (path and query)."""
    found = re.search(r"(/setup\?token=[A-Za-z0-9_-]+)", server.log())
    assert found, server.log()
    return found.group(1)


@pytest.fixture
def fresh_server(data_dir: Path) -> Iterator[KeyfobServer]:
    """A server with no owner yet (first run)."""
    srv = KeyfobServer(data_dir).start()
    yield srv
    srv.stop()


def test_first_run_setup(fresh_server: KeyfobServer) -> None:
    url = fresh_server.url
    with requests.Session() as browser:
        home = browser.get(url + "/", allow_redirects=False, timeout=10)
        assert home.status_code in (302, 303) and home.headers["location"] == "/setup"
        page = browser.get(url + setup_link(fresh_server), timeout=10)
        assert page.status_code == 200
        token = hidden(page.text, "csrf_token")
        form = {
            "csrf_token": token,
            "username": "alice",
            "password": "long enough pw",
            "password_confirm": "different",
            "timezone": "Europe/Berlin",
        }
        assert browser.post(url + "/setup", data=form, timeout=10).status_code == 400
        form["password_confirm"] = form["password"]
        done = browser.post(url + "/setup", data=form, allow_redirects=False, timeout=10)
        assert done.status_code == 303 and done.headers["location"] == "/"
        dashboard = browser.get(url + "/", timeout=10)
        assert dashboard.status_code == 200 and "Dashboard" in dashboard.text
    with requests.Session() as other:
        again = other.get(url + "/setup", allow_redirects=False, timeout=10)
        assert again.status_code in (302, 303) and again.headers["location"] == "/login"
        page = other.get(url + "/login", timeout=10)
        late = other.post(
            url + "/setup",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "username": "mallory",
                "password": "long enough pw",
                "password_confirm": "long enough pw",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert late.status_code in (302, 303)

    async def users(store: Store) -> int:
        return await store.users.count()

    assert in_store(fresh_server, users) == 1


def test_login_wrong_password_gives_no_session(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        response = login(browser, server, password="wrong password!")
        assert response.status_code == 401
        assert "Wrong username or password" in response.text
        home = browser.get(server.url + "/", allow_redirects=False, timeout=10)
        assert home.status_code in (302, 303) and home.headers["location"].startswith("/login")


def test_login_throttled_after_failures(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        for _ in range(5):
            assert (
                login(browser, server, username="victim", password="guess guess").status_code == 401
            )
        blocked = login(browser, server, username="victim", password="guess guess")
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
        # other usernames are not affected
        assert login(browser, server).status_code == 303


def test_login_csrf_missing_is_403(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        response = browser.post(
            server.url + "/login",
            data={"username": OWNER, "password": OWNER_PASSWORD},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 403
        assert "user_id" not in str(browser.cookies)
        home = browser.get(server.url + "/", allow_redirects=False, timeout=10)
        assert home.status_code in (302, 303)


@pytest.mark.parametrize(
    "next_url", ["//evil.test/x", "https://evil.test/", "/\\evil.test", "javascript:alert(1)"]
)
def test_login_next_is_never_offsite(server: KeyfobServer, next_url: str) -> None:
    with requests.Session() as browser:
        response = login(browser, server, next_url=next_url)
        assert response.status_code == 303 and response.headers["location"] == "/"


def test_login_rotates_session(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        before = browser.get(server.url + "/login", timeout=10)
        token_before = hidden(before.text, "csrf_token")
        assert login(browser, server).status_code == 303
        after = browser.get(server.url + "/apps/new", timeout=10)
        assert hidden(after.text, "csrf_token") != token_before


def test_consent_csrf_missing_is_403(server: KeyfobServer) -> None:
    client_id, _ = register(server, [WEB])
    url, _ = authorize_url(server, client_id)
    with logged_in_browser(server) as browser:
        page = browser.get(url, timeout=10)
        response = browser.post(
            server.url + "/oauth/authorize",
            data={
                "request_id": hidden(page.text, "request_id"),
                "action": "approve",
                "cap_usd": "5",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 403 and "location" not in response.headers
        forged = browser.post(
            server.url + "/oauth/authorize",
            data={
                "csrf_token": "forged",
                "request_id": hidden(page.text, "request_id"),
                "action": "approve",
                "cap_usd": "5",
            },
            allow_redirects=False,
            timeout=10,
        )
        assert forged.status_code == 403
    assert grants_of(server, client_id) == []


def test_consent_page_models_cap_and_choices(server: KeyfobServer) -> None:
    seed_provider(server, "local", ("llama", "qwen"))
    client_id, _ = register(server, [WEB], name="Shiny <App>")
    url, _ = authorize_url(server, client_id, keyfob_cap_usd="2.5")
    with logged_in_browser(server) as browser:
        page = browser.get(url, timeout=10)
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "Shiny &lt;App&gt;" in page.text and "<App>" not in page.text
        assert "app.example" in page.text
        assert checkboxes(page.text, "models") == ["local/llama", "local/qwen"]
        # no models suggested: only the cheapest (the first of equally free ones) is checked
        assert page.text.count(" checked") == 1
        assert re.search(r'name="cap_usd" value="2.5"', page.text)
        # a model not offered is refused, and so is a malformed cap
        base = {
            "csrf_token": hidden(page.text, "csrf_token"),
            "request_id": hidden(page.text, "request_id"),
            "action": "approve",
        }
        bad = browser.post(
            server.url + "/oauth/authorize",
            allow_redirects=False,
            timeout=10,
            data={**base, "models": ["other/gpt"], "cap_usd": "5"},
        )
        assert bad.status_code == 400
        bad = browser.post(
            server.url + "/oauth/authorize",
            allow_redirects=False,
            timeout=10,
            data={**base, "models": ["local/qwen"], "cap_usd": "five"},
        )
        assert bad.status_code == 400
        good = browser.post(
            server.url + "/oauth/authorize",
            allow_redirects=False,
            timeout=10,
            data={**base, "models": ["local/qwen"], "cap_usd": "1.25"},
        )
        assert good.status_code == 303
        query = parse_qs(urlsplit(good.headers["location"]).query)
        assert query["state"] == ["abc"] and query["code"][0].startswith("kfac_")
        # the request id is single use
        again = browser.post(
            server.url + "/oauth/authorize",
            allow_redirects=False,
            timeout=10,
            data={**base, "models": [], "cap_usd": "1"},
        )
        assert again.status_code == 400
    [grant] = grants_of(server, client_id)
    assert grant.models == ("local/qwen",)
    assert grant.cap_micro_usd == 1_250_000 and grant.window == "month"


def test_dashboard_lists_and_revokes(server: KeyfobServer) -> None:
    seed_provider(server, "fake", ("m1",))
    client_id, _ = register(server, [WEB], name="Revocable")
    url, verifier = authorize_url(server, client_id)
    with logged_in_browser(server) as browser:
        location = consent(browser, url, cap_usd="3")
        code = parse_qs(urlsplit(location).query)["code"][0]
        tokens = requests.post(
            server.url + "/oauth/token",
            timeout=10,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": WEB,
                "code_verifier": verifier,
                "client_id": client_id,
            },
        ).json()
        page = browser.get(server.url + "/", timeout=10)
        assert page.status_code == 200
        assert "Revocable" in page.text and "$0.00 of $3.00" in page.text
        providers = browser.get(server.url + "/providers", timeout=10)
        assert "fake" in providers.text and "http://127.0.0.1:9/v1" in providers.text
        [grant] = grants_of(server, client_id)
        action = f"/grants/{grant.id}/revoke"
        assert action in page.text
        confirm = browser.get(server.url + action, timeout=10)
        assert confirm.status_code == 200 and "Revoke <em>Revocable</em>?" in confirm.text
        no_csrf = browser.post(server.url + action, allow_redirects=False, timeout=10)
        assert no_csrf.status_code in (403, 415)
        done = browser.post(
            server.url + action,
            data={"csrf_token": hidden(page.text, "csrf_token")},
            allow_redirects=False,
            timeout=10,
        )
        assert done.status_code == 303
        after = browser.get(server.url + "/", timeout=10).text
        assert "Revoked Revocable" in after  # the message after the action
        apps, revoked = after.split('id="revoked-h"')
        assert "Revocable" not in apps.split('id="apps-h"')[1]  # not among live apps
        assert "Revocable" in revoked.split("Registered apps")[0]  # listed with its history
    [grant] = grants_of(server, client_id)
    assert grant.revoked_at is not None

    async def live(store: Store) -> bool:
        return (
            await store.tokens.active_with_grant(
                hash_token(tokens["access_token"]), "access", time.time()
            )
            is not None
        )

    assert in_store(server, live) is False
    refreshed = requests.post(
        server.url + "/oauth/token",
        timeout=10,
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 400


def test_revoke_someone_elses_grant_is_404(server: KeyfobServer) -> None:
    with logged_in_browser(server) as browser:
        page = browser.get(server.url + "/", timeout=10)
        response = browser.post(
            server.url + "/grants/nope/revoke",
            data={"csrf_token": hidden(page.text, "csrf_token")},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 404


def test_register_app_page_shows_secret_once(server: KeyfobServer) -> None:
    with logged_in_browser(server) as browser:
        page = browser.get(server.url + "/apps/new", timeout=10)
        token = hidden(page.text, "csrf_token")
        bad = browser.post(
            server.url + "/apps/new",
            timeout=10,
            data={
                "csrf_token": token,
                "name": "Bad",
                "redirect_uris": "javascript:alert(1)",
                "client_type": "public",
            },
        )
        assert bad.status_code == 400 and "javascript" in bad.text
        made = browser.post(
            server.url + "/apps/new",
            timeout=10,
            data={
                "csrf_token": token,
                "name": "Server App",
                "redirect_uris": "https://app.example/cb\nhttp://127.0.0.1/cb",
                "client_type": "confidential",
            },
        )
        assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
        secret = re.search(r'id="client_secret">(kfcs_[^<]+)<', made.text)
        client_id = re.search(r'id="client_id">([^<]+)<', made.text)
        assert secret and client_id
        dashboard = browser.get(server.url + "/", timeout=10).text
        assert client_id.group(1) in dashboard and secret.group(1) not in dashboard
    log = server.log()
    assert secret.group(1) not in log


def test_pages_need_login(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        for path in ("/apps/new", "/providers/new", "/"):
            response = browser.get(server.url + path, allow_redirects=False, timeout=10)
            assert response.status_code in (302, 303), path
            assert response.headers["location"].startswith("/login?next=")


def test_oversized_and_malformed_forms(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        big = browser.post(server.url + "/login", data={"username": "x" * 70_000}, timeout=10)
        assert big.status_code == 413
        weird = browser.post(
            server.url + "/login",
            data=b"\xff=\xfe",
            timeout=10,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert weird.status_code == 400
        as_json = browser.post(server.url + "/login", json={"username": "x"}, timeout=10)
        assert as_json.status_code == 415


def test_logout(server: KeyfobServer) -> None:
    with logged_in_browser(server) as browser:
        page = browser.get(server.url + "/", timeout=10)
        out = browser.post(
            server.url + "/logout",
            data={"csrf_token": hidden(page.text, "csrf_token")},
            allow_redirects=False,
            timeout=10,
        )
        assert out.status_code == 303
        home = browser.get(server.url + "/", allow_redirects=False, timeout=10)
        assert home.status_code in (302, 303)


def test_provider_page_never_echoes_the_key(server: KeyfobServer) -> None:
    with logged_in_browser(server) as browser:
        page = browser.get(server.url + "/providers/new", timeout=10)
        assert page.status_code == 200
        response = browser.post(
            server.url + "/providers/new",
            timeout=10,
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "name": "bad/name",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "sk-very-secret-key",
                "models": "m1, m2",
            },
        )
        assert response.status_code in (400, 503)
        assert "sk-very-secret-key" not in response.text
    assert "sk-very-secret-key" not in server.log()
