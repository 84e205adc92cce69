"""Redirect URI registration and matching (RFC 8252, RFC 9700 exact matching)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyfob.oauth import rfc8252
from keyfob.oauth.clients import InvalidClient, register_app
from keyfob.store import Store

WEB = "https://app.example/callback"
LOOP4 = "http://127.0.0.1/cb"
LOOP6 = "http://[::1]:8080/cb"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open("sqlite+aiosqlite:///" + str(tmp_path / "k.db"))
    yield s
    await s.close()


@pytest.mark.parametrize(
    "uri",
    [
        WEB,
        "https://app.example/cb?tenant=1",
        LOOP4,
        LOOP6,
        "http://127.0.0.1:9000/",
        "com.example.app:/oauth",
        "http://localhost:3000/cb",
    ],
)
def test_registrable(uri: str) -> None:
    assert rfc8252.check_registrable(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "javascript:alert(1)",
        "data:text/html,hi",
        "https://app.example/cb#frag",
        "https://user@app.example/cb",
        "https://user:pw@app.example/cb",
        "http://app.example/cb",
        "https://",
        "myapp:/cb",
        "HTTPS://app.example/cb",
        "https://app.example/ cb",
        "https://app.example/\ncb",
        "vbscript:x",
        "file:///etc/passwd",
        "https://a" + "b" * 2100,
        "http://127.0.0.1:99999/cb",
        "https://app.example\\@evil.test/",
    ],
)
def test_not_registrable(uri: str) -> None:
    with pytest.raises(rfc8252.BadRedirectURI):
        rfc8252.check_registrable(uri)


def test_exact_match() -> None:
    assert rfc8252.matches(WEB, [WEB])
    assert not rfc8252.matches(WEB + "/", [WEB])
    assert not rfc8252.matches(WEB.upper(), [WEB])


@pytest.mark.parametrize(
    "requested",
    [
        "http://127.0.0.1:51234/cb",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:1/cb",
    ],
)
def test_loopback_port_may_vary(requested: str) -> None:
    assert rfc8252.matches(requested, [LOOP4])


def test_loopback_v6_port_may_vary() -> None:
    assert rfc8252.matches("http://[::1]:40000/cb", [LOOP6])
    assert rfc8252.matches("http://[::1]/cb", [LOOP6])


@pytest.mark.parametrize(
    "requested",
    [
        "http://127.0.0.1.evil.test/cb",  # a domain that starts like the IP
        "http://127.0.0.1@evil.test/cb",  # userinfo
        "http://127.0.0.1:8080@evil.test/cb",
        "http://127.0.0.1:5000/other",  # different path
        "http://127.0.0.1:5000/cb/",
        "http://127.0.0.1:5000/cb?x=1",  # extra query
        "http://127.0.0.1:5000/cb#x",  # fragment
        "https://127.0.0.1:5000/cb",  # scheme
        "http://127.0.0.2:5000/cb",  # other loopback address
        "http://localhost:5000/cb",  # name, not IP literal
        "http://[::1]:5000/cb",  # other family
        "http://127.0.0.1:0/cb",
        "http://127.0.0.1:65536/cb",
        "http://127.0.0.1:/cb",
        "javascript://127.0.0.1/cb",
        "http://127.0.0.1:5000/CB",
    ],
)
def test_loopback_tricks_refused(requested: str) -> None:
    assert not rfc8252.matches(requested, [LOOP4])


def test_localhost_is_exact_only() -> None:
    registered = "http://localhost:3000/cb"
    assert rfc8252.matches(registered, [registered])
    assert not rfc8252.matches("http://localhost:3001/cb", [registered])


@given(st.text(min_size=0, max_size=80))
def test_any_other_uri_is_refused(requested: str) -> None:
    """Property: for a non-loopback registration only the identical string matches."""
    if requested != WEB:
        assert not rfc8252.matches(requested, [WEB])


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30))
def test_suffixes_and_prefixes_refused(noise: str) -> None:
    if noise:
        assert not rfc8252.matches(WEB + noise, [WEB])
        assert not rfc8252.matches(noise + WEB, [WEB])
        if WEB[:-1] + noise != WEB:
            assert not rfc8252.matches(WEB[:-1] + noise, [WEB])


async def test_register_app(store: Store) -> None:
    client, secret = await register_app(store, name="  My  App ", redirect_uris=[WEB], public=False)
    assert client.name == "My App"
    assert secret is not None and secret.startswith("kfcs_")
    assert client.secret_hash and secret not in client.secret_hash
    public, none = await register_app(store, name="CLI", redirect_uris=[LOOP4], public=True)
    assert none is None and public.secret_hash is None and public.is_public


@pytest.mark.parametrize(
    ("name", "uris"),
    [
        ("", [WEB]),
        ("x" * 200, [WEB]),
        ("ok", []),
        ("ok", ["javascript:alert(1)"]),
        ("ok", [WEB + "#f"]),
        ("ok", ["http://evil.test/cb"]),
        ("bad\x00name", [WEB]),
    ],
)
async def test_register_app_refuses(store: Store, name: str, uris: list[str]) -> None:
    with pytest.raises(InvalidClient):
        await register_app(store, name=name, redirect_uris=uris, public=True)


LOOP_REGISTERED = "http://127.0.0.1:4000/cb?x=1"
_LOOP_SAME_BUT_PORT = re.compile(r"^http://127\.0\.0\.1(?::([0-9]{1,5}))?/cb\?x=1\Z")


@st.composite
def one_edit(draw: st.DrawFn, base: str) -> str:
    """``base`` with one character inserted, deleted or replaced (any code point)."""
    i = draw(st.integers(0, len(base)))
    op = draw(st.sampled_from(["insert", "delete", "replace"]))
    c = draw(st.characters())
    if op == "insert":
        return base[:i] + c + base[i:]
    if op == "delete" or i == len(base):
        return base[:i] + base[i + 1 :]
    return base[:i] + c + base[i + 1 :]


@given(st.one_of(one_edit(LOOP_REGISTERED), one_edit(WEB), st.text(max_size=60)))
def test_only_the_loopback_port_may_differ(requested: str) -> None:
    """Property: a request differing from a registration in anything but the loopback
    port (RFC 8252 7.3) is refused, whatever the edit."""
    registered = [LOOP_REGISTERED, WEB]
    m = _LOOP_SAME_BUT_PORT.match(requested)
    port_only = requested == WEB or (
        m is not None and (m.group(1) is None or 0 < int(m.group(1)) < 65536)
    )
    assert rfc8252.matches(requested, registered) == port_only, requested
