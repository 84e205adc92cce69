"""Attacks on the HTTP edge (issue 11): spoofed client addresses, DNS rebinding, claiming
a fresh server's setup, guessing passwords from many addresses, a loose data dir."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from starlette.testclient import TestClient

from keyfob.guard import Guard, allowed_hosts, host_name
from keyfob.server import create_app
from keyfob.settings import Settings, UnsafeSettings
from keyfob.settings_checks import check_safe
from keyfob.web.ratelimit import ACCOUNT_FREE_ATTEMPTS, FREE_ATTEMPTS, LoginThrottle
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.oauth_app import InProcess
from tests.oauth_browser import hidden, login
from tests.support import KeyfobServer

REBIND = "rebind.attacker.example"
REGISTRATION = {
    "client_name": "spammer",
    "redirect_uris": ["http://127.0.0.1:1/cb"],
    "token_endpoint_auth_method": "none",
}


def spoofed(n: int) -> dict[str, str]:
    """A fresh forwarding chain per request, as the review's rotating attacker sent."""
    return {"X-Forwarded-For": f"203.0.113.{n % 250 + 1}", "X-Real-IP": f"198.51.100.{n % 250}"}


# --- trusted proxies: a real `keyfob serve` (uvicorn's own proxy handling is the risk) ----


def test_rotating_forwarded_for_does_not_escape_the_login_throttle(server: KeyfobServer) -> None:
    with requests.Session() as browser:
        page = browser.get(server.url + "/login", timeout=10)
        csrf = hidden(page.text, "csrf_token")
        statuses = []
        for i in range(FREE_ATTEMPTS + 3):
            answer = browser.post(
                server.url + "/login",
                data={"csrf_token": csrf, "username": OWNER, "password": f"guess {i:04d}"},
                headers=spoofed(i),
                allow_redirects=False,
                timeout=10,
            )
            statuses.append(answer.status_code)
    assert statuses[:FREE_ATTEMPTS] == [401] * FREE_ATTEMPTS
    assert set(statuses[FREE_ATTEMPTS:]) == {429}, statuses


def test_rotating_forwarded_for_does_not_escape_the_registration_limit(
    server: KeyfobServer,
) -> None:
    statuses = [
        requests.post(
            server.url + "/oauth/register", json=REGISTRATION, headers=spoofed(i), timeout=10
        ).status_code
        for i in range(22)
    ]
    assert statuses[:20] == [201] * 20 and statuses[20:] == [429, 429], statuses


def test_rotating_forwarded_for_does_not_escape_the_device_limits(server: KeyfobServer) -> None:
    """Device authorization (codes per address) and the person's user-code entry (wrong
    codes per address, with back-off): a fresh X-Forwarded-For per request changes
    nothing, every request is the same loopback client."""
    from keyfob.oauth.rfc8628 import DEVICE_AUTHORIZATION_PATH
    from keyfob.oauth.routes import DEVICE_CODES_PER_10_MIN

    registered = requests.post(server.url + "/oauth/register", json=REGISTRATION, timeout=10)
    client_id = registered.json()["client_id"]
    statuses = [
        requests.post(
            server.url + DEVICE_AUTHORIZATION_PATH,
            data={"client_id": client_id},
            headers=spoofed(i),
            timeout=10,
        ).status_code
        for i in range(DEVICE_CODES_PER_10_MIN + 2)
    ]
    assert statuses[:DEVICE_CODES_PER_10_MIN] == [200] * DEVICE_CODES_PER_10_MIN, statuses
    assert statuses[DEVICE_CODES_PER_10_MIN:] == [429, 429], statuses
    with requests.Session() as browser:
        assert login(browser, server).status_code == 303
        csrf = hidden(browser.get(server.url + "/device", timeout=10).text, "csrf_token")
        typed = [
            browser.post(
                server.url + "/device",
                data={"csrf_token": csrf, "user_code": f"WXYZ-{i:04d}"},
                headers=spoofed(i),
                allow_redirects=False,
                timeout=10,
            )
            for i in range(FREE_ATTEMPTS + 2)
        ]
    assert [t.status_code for t in typed[:FREE_ATTEMPTS]] == [400] * FREE_ATTEMPTS
    assert [t.status_code for t in typed[FREE_ATTEMPTS:]] == [429, 429]
    assert all(int(t.headers["Retry-After"]) >= 1 for t in typed[FREE_ATTEMPTS:])


def test_personal_mode_refuses_trusted_proxies(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSettings, match="trusts no proxy"):
        check_safe(Settings(data_dir=tmp_path, trusted_proxies=("127.0.0.1",)))


def hosted(tmp_path: Path, **more: object) -> Settings:
    return Settings(
        mode="hosted",
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://u@127.0.0.1/test",
        master_key="x" * 43,
        public_url="https://keys.example.org",
    ).with_overrides(**more)


def test_hosted_mode_refuses_a_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSettings, match="not an address"):
        check_safe(hosted(tmp_path, trusted_proxies=("proxy.internal",)))


def scope(client: str, *headers: tuple[str, str], host: str = "keys.example.org") -> dict:  # type: ignore[type-arg]
    raw = [(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers]
    return {"type": "http", "path": "/login", "client": (client, 5555), "headers": raw}


def test_forwarded_for_believed_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    guard = Guard.from_settings(hosted(tmp_path, trusted_proxies=("10.0.0.0/8", "fd00::1")))
    # straight from the internet: the header is the client's own words
    direct = scope("198.51.100.7", ("x-forwarded-for", "127.0.0.1"))
    guard.apply_proxy(direct)
    assert direct["client"][0] == "198.51.100.7"
    # through the proxy: the rightmost address the proxy did not itself trust
    chain = scope(
        "10.1.2.3",
        ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.9.9.9"),
        ("x-forwarded-proto", "https"),
    )
    guard.apply_proxy(chain)
    assert chain["client"][0] == "203.0.113.9" and chain["scheme"] == "https"
    # two headers are one list; an IPv6 proxy works the same
    split = scope("fd00::1", ("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2"))
    guard.apply_proxy(split)
    assert split["client"][0] == "2.2.2.2"
    # garbage where an address should be: the client is not taken from beyond it
    junk = scope("10.0.0.1", ("x-forwarded-for", "1.1.1.1, not-an-ip"))
    guard.apply_proxy(junk)
    assert junk["client"][0] == "10.0.0.1"


# --- Host allow-list (DNS rebinding) ----------------------------------------------------


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as app:
        yield app


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/setup"),
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("POST", "/oauth/register"),
        ("POST", "/oauth/token"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("GET", "/v1/models"),
        ("GET", "/nowhere"),
    ],
)
def test_foreign_host_refused_before_any_route(kf: InProcess, method: str, path: str) -> None:
    answer = kf.client.request(method, path, headers={"Host": REBIND})
    assert answer.status_code == 400
    assert "csrf" not in answer.text and "Host" in answer.text
    if path == "/v1/messages":
        assert answer.json()["type"] == "error"
    elif path.startswith("/v1/"):
        assert answer.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize(
    "host",
    [f"{REBIND}:8787", "127.0.0.1.attacker.example", "localhost.attacker.example", "", "[::2]"],
)
def test_lookalike_hosts_refused(kf: InProcess, host: str) -> None:
    assert kf.client.get("/login", headers={"Host": host}).status_code == 400


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:9", "localhost:8787", "[::1]:80", "LOCALHOST."]
)
def test_loopback_names_served_in_personal_mode(kf: InProcess, host: str) -> None:
    assert kf.client.get("/login", headers={"Host": host}).status_code == 200


def test_health_check_answers_any_host(kf: InProcess) -> None:
    assert kf.client.get("/healthz", headers={"Host": "10.0.0.7:8787"}).status_code == 200


def test_two_host_headers_refused(kf: InProcess) -> None:
    guard = kf.app.guard  # type: ignore[attr-defined]
    raw = scope("127.0.0.1", ("host", REBIND), host="127.0.0.1")
    assert not guard.host_allowed(raw)


def test_hosted_mode_answers_its_public_host_and_extras_only(tmp_path: Path) -> None:
    names = allowed_hosts(hosted(tmp_path, allowed_hosts=("Keys.Internal:443",)))
    assert names == {"keys.example.org", "keys.internal"}
    assert "localhost" not in names and "127.0.0.1" not in names
    assert host_name("[2001:db8::1]:443") == "2001:db8::1"


def test_rebinding_cannot_claim_a_fresh_server(data_dir: Path) -> None:
    """The review's reproduction: a page on a name resolving to 127.0.0.1 reads /setup."""
    srv = KeyfobServer(data_dir).start()
    try:
        page = requests.get(
            srv.url + "/setup", headers={"Host": f"{REBIND}:{srv.port}"}, timeout=10
        )
        assert page.status_code == 400 and "csrf_token" not in page.text
    finally:
        srv.stop()


# --- the one-time setup token -------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    settings = Settings(data_dir=tmp_path / "data", port=8799)
    links: list[str] = []
    app = create_app(settings, links.append)
    with TestClient(app, base_url=settings.issuer, follow_redirects=False) as client:
        assert len(links) == 1 and links[0].startswith(settings.issuer + "/setup?token=")
        yield client, links[0].split("token=", 1)[1]


def test_setup_without_its_token_is_refused(fresh: tuple[TestClient, str]) -> None:
    client, token = fresh
    assert client.get("/setup").status_code == 403
    assert client.get("/setup?token=" + "A" * len(token)).status_code == 403
    assert client.get("/setup?token=").status_code == 403
    # a CSRF token of this very session (from the signed cookie): still not enough
    payload = client.cookies["keyfob_session"].split(".", 1)[0]
    csrf = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["csrf"]
    answer = client.post(
        "/setup",
        data={
            "csrf_token": csrf,
            "username": "attacker",
            "password": "long enough pw",
            "password_confirm": "long enough pw",
            "token": token[:-1],
        },
    )
    assert answer.status_code == 403


def test_setup_with_the_printed_link_once(fresh: tuple[TestClient, str]) -> None:
    client, token = fresh
    first = client.get(f"/setup?token={token}")
    assert first.status_code == 303 and first.headers["location"] == "/setup"
    page = client.get("/setup")
    assert page.status_code == 200
    form = {
        "csrf_token": hidden(page.text, "csrf_token"),
        "username": "alice",
        "password": "long enough pw",
        "password_confirm": "long enough pw",
    }
    done = client.post("/setup", data=form)
    assert done.status_code == 303 and done.headers["location"] == "/"
    client.cookies.clear()
    # the owner exists: the link is spent
    assert client.get(f"/setup?token={token}").headers["location"] == "/login"


def test_serve_prints_the_link_and_no_log_holds_it(data_dir: Path) -> None:
    srv = KeyfobServer(data_dir).start()
    try:
        found = re.search(r"/setup\?token=([A-Za-z0-9_-]{32,})", srv.log())
        assert found, srv.log()
        assert requests.get(srv.url + "/setup", timeout=10).status_code == 403
        with requests.Session() as browser:
            page = browser.get(srv.url + found.group(0), timeout=10)
            assert page.status_code == 200 and "csrf_token" in page.text
    finally:
        srv.stop()
    assert not any(found.group(1) in p.read_text(errors="replace") for p in data_dir.glob("*.db*"))


# --- per-account login limit ------------------------------------------------------------------


def test_account_backoff_across_many_addresses() -> None:
    throttle = LoginThrottle()
    now = 1000.0
    for i in range(ACCOUNT_FREE_ATTEMPTS):
        address = f"203.0.113.{i}"
        assert throttle.retry_after("Owner", address, now) == 0
        throttle.failed("owner", address, now)
    # every address is new, yet the account now backs off, and longer with each failure
    first = throttle.retry_after("owner", "198.51.100.1", now)
    assert first > 0
    throttle.failed("owner", "198.51.100.1", now)
    assert throttle.retry_after("owner", "198.51.100.2", now) > first
    # other accounts are not affected; the back-off is bounded
    assert throttle.retry_after("someone", "198.51.100.1", now) == 0
    for _ in range(100):
        throttle.failed("owner", "198.51.100.3", now)
    assert throttle.retry_after("owner", "198.51.100.4", now) <= 300
    # and it ends: the real owner gets in once it has passed
    assert throttle.retry_after("owner", "198.51.100.4", now + 301) == 0


def test_a_flood_of_failures_cannot_flush_the_owners_back_off() -> None:
    """Failures from ever new addresses (and made-up usernames) fill the per-address
    table; the per-account counts live apart and the owner's is kept, so flooding does
    not buy an attacker fresh guesses. Both tables stay bounded."""
    from keyfob.web import ratelimit

    throttle = LoginThrottle()
    now = 1000.0
    for i in range(ACCOUNT_FREE_ATTEMPTS + 2):
        throttle.failed("owner", f"203.0.113.{i}", now)
    backoff = throttle.retry_after("owner", "198.51.100.1", now)
    assert backoff > 0
    for i in range(ratelimit.MAX_ENTRIES + ratelimit.MAX_ACCOUNTS + 500):
        throttle.failed(f"nobody-{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now + 1)
    assert throttle.retry_after("owner", "198.51.100.1", now + 1) == backoff - 1
    assert len(throttle._failures) <= ratelimit.MAX_ENTRIES
    assert len(throttle._accounts) <= ratelimit.MAX_ACCOUNTS
    # the per-address table drops its oldest entries: the newest flood entries remain
    last = ratelimit.MAX_ENTRIES + ratelimit.MAX_ACCOUNTS + 499
    assert (f"nobody-{last}", f"10.{last >> 16 & 255}.{last >> 8 & 255}.{last & 255}") in (
        throttle._failures
    )
    assert ("owner", "203.0.113.0") not in throttle._failures
    # flooding the owner's own name from new addresses only adds to its count
    for i in range(ratelimit.MAX_ENTRIES + 10):
        throttle.failed("owner", f"192.0.2.{i % 250}-{i}", now + 2)
    assert throttle.retry_after("owner", "198.51.100.9", now + 2) > 0


def test_a_flood_of_new_addresses_keeps_the_window_counts_at_their_limit() -> None:
    """A full table drops its oldest windows, not every window: an address at its limit
    stays limited while others flood in (it was all cleared at 10,000 entries)."""
    from keyfob.web import ratelimit
    from keyfob.web.ratelimit import WindowLimiter

    limiter = WindowLimiter(3, 3600.0)
    for i in range(ratelimit.MAX_ENTRIES - 1):  # the table all but full
        limiter.hit(f"10.0.{i >> 8}.{i & 255}", 0.0)
    for _ in range(3):
        assert limiter.hit("203.0.113.7", 1.0) == 0
    assert limiter.hit("203.0.113.7", 1.0) > 0
    for i in range(ratelimit.MAX_ENTRIES // 2):  # new addresses push the oldest out
        limiter.hit(f"10.1.{i >> 8}.{i & 255}", 2.0)
    assert limiter.hit("203.0.113.7", 3.0) > 0
    assert len(limiter._counts) <= ratelimit.MAX_ENTRIES
    assert "10.0.0.0" not in limiter._counts


def test_login_per_account_limit_on_a_real_server(server: KeyfobServer) -> None:
    """Many addresses are out of reach on loopback; the account limit is proven above, and
    here the right password after the back-off starts still gets a 429 (no oracle)."""
    with requests.Session() as browser:
        for i in range(FREE_ATTEMPTS):
            assert login(browser, server, password=f"wrong {i:05d}").status_code == 401
        blocked = login(browser, server, password=OWNER_PASSWORD)
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1


# --- the data dir --------------------------------------------------------------------------


def test_loose_data_dir_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="keyfob"):
        create_app(Settings(data_dir=data))
    assert data.stat().st_mode & 0o777 == 0o700
    assert any("tightened it to 0700" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keyfob"):
        create_app(Settings(data_dir=data))
    assert not caplog.records
