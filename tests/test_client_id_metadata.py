"""Client ID Metadata Documents (MCP 2026-07-28): an https URL as client_id, fetched
under strict limits. A real aiohttp server on 127.0.0.1 serves the documents (personal
mode with loopback allowed); hosted mode must refuse loopback and private addresses."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keyfob.oauth import client_metadata
from keyfob.oauth.client_metadata import MetadataDocumentError
from keyfob.settings import Settings
from tests.oauth_app import InProcess, pkce, query_of

CB = "http://127.0.0.1/callback"


class DocServer:
    """aiohttp on 127.0.0.1 in its own thread and loop; counts requests per path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def doc(self, path: str, **changes: Any) -> dict[str, Any]:
        return {
            "client_id": self.url(path),
            "client_name": "Doc App",
            "redirect_uris": [CB],
            "token_endpoint_auth_method": "none",
            **changes,
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == "/slow.json":
            await asyncio.sleep(2)
        if path == "/redirect.json":
            raise web.HTTPFound(self.url("/client.json"))
        if path == "/big.json":
            return web.json_response(self.doc(path, padding="x" * 6000))
        if path == "/html":
            return web.Response(text="<html></html>", content_type="text/html")
        if path == "/mismatch.json":
            return web.json_response(self.doc(path, client_id=self.url("/client.json")))
        if path == "/secret.json":
            return web.json_response(self.doc(path, client_secret="s"))
        if path == "/confidential.json":
            return web.json_response(self.doc(path, token_endpoint_auth_method="private_key_jwt"))
        if path == "/badredirect.json":
            return web.json_response(self.doc(path, redirect_uris=["http://evil.example/cb"]))
        if path == "/notjson.json":
            return web.Response(text="{nope", content_type="application/json")
        if path == "/deep.json":  # 2,400 levels, within the 5 KB limit
            nested = json.dumps(self.doc(path))[:-1] + ', "x": ' + "[" * 2400 + "]" * 2400 + "}"
            return web.Response(text=nested, content_type="application/json")
        if path == "/surrogate.json":  # a lone surrogate in the name, as a JSON escape
            # json.dumps writes the lone surrogate as the ASCII escape \ud800
            text = json.dumps(self.doc(path, client_name="Doc \ud800 App"))
            return web.Response(text=text, content_type="application/json")
        if path == "/missing.json":
            return web.Response(status=404)
        return web.json_response(self.doc(path))

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    def __enter__(self) -> DocServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def docs() -> Iterator[DocServer]:
    with DocServer() as server:
        yield server


@pytest.fixture
def kf(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data", client_metadata_allow_loopback=True) as app:
        yield app


def resolve(kf: InProcess, url: str) -> Any:
    return kf.run(client_metadata.resolve_client, kf.store, kf.settings, url)


def test_sign_in_with_a_metadata_document(kf: InProcess, docs: DocServer) -> None:
    url = docs.url("/client.json")
    verifier, challenge = pkce()
    browser = kf.logged_in()
    page = browser.consent_page(kf.authorize_url(url, "http://127.0.0.1:4321/callback", challenge))
    assert "Doc App" in page.text and f"127.0.0.1:{docs.port}" in page.text
    location = browser.approve(kf.authorize_url(url, "http://127.0.0.1:4321/callback", challenge))
    q = query_of(location)
    assert q["iss"] == kf.url
    answer = kf.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": "http://127.0.0.1:4321/callback",
            "code_verifier": verifier,
            "client_id": url,
        },
    )
    assert answer.status_code == 200, answer.text
    # fetched once, then served from the cache
    assert docs.hits["/client.json"] == 1
    meta = kf.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["client_id_metadata_document_supported"] is True


def test_cache_expires(kf: InProcess, docs: DocServer) -> None:
    url = docs.url("/cached.json")
    first = resolve(kf, url)
    assert first.kind == "metadata_document" and first.is_public
    assert resolve(kf, url).id == url
    assert docs.hits["/cached.json"] == 1
    later = first.fetched_at + client_metadata.CACHE_TTL_S + 1
    kf.run(client_metadata.resolve_client, kf.store, kf.settings, url, now=later)
    assert docs.hits["/cached.json"] == 2


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/big.json", "larger than"),
        ("/redirect.json", "302"),
        ("/html", "not JSON"),
        ("/mismatch.json", "client_id"),
        ("/secret.json", "client_secret"),
        ("/confidential.json", "token_endpoint_auth_method"),
        ("/badredirect.json", "http"),
        ("/notjson.json", "not valid JSON"),
        ("/deep.json", "nested deeper than 64"),
        ("/surrogate.json", "surrogate"),
        ("/missing.json", "404"),
    ],
)
def test_bad_documents_refused(kf: InProcess, docs: DocServer, path: str, reason: str) -> None:
    with pytest.raises(MetadataDocumentError, match=reason):
        resolve(kf, docs.url(path))
    assert kf.run(kf.store.clients.get, docs.url(path)) is None


@pytest.mark.parametrize("path", ["/deep.json", "/surrogate.json"])
def test_hostile_json_is_an_oauth_error_not_a_500(
    kf: InProcess, docs: DocServer, path: str
) -> None:
    """Nested thousands deep (RecursionError in json.loads) or a lone surrogate: the
    authorization endpoint shows the OAuth error, never a 500."""
    _, challenge = pkce()
    kf.logged_in()
    answer = kf.client.get(kf.authorize_url(docs.url(path), CB, challenge))
    assert answer.status_code == 400, answer.text
    assert "client metadata document" in answer.text and "location" not in answer.headers
    assert docs.hits[path] == 1
    assert kf.run(kf.store.clients.get, docs.url(path)) is None


def test_slow_document_times_out(
    kf: InProcess, docs: DocServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_metadata, "TIMEOUT_S", 0.3)
    with pytest.raises(MetadataDocumentError, match="within"):
        resolve(kf, docs.url("/slow.json"))


def test_bad_document_is_shown_not_redirected(kf: InProcess, docs: DocServer) -> None:
    """The redirect URI is not trusted until the document is: the error is a page."""
    _, challenge = pkce()
    kf.logged_in()
    answer = kf.client.get(kf.authorize_url(docs.url("/mismatch.json"), CB, challenge))
    assert answer.status_code == 400 and "location" not in answer.headers


def test_hosted_mode_refuses_loopback_and_private(docs: DocServer) -> None:
    hosted = Settings(mode="hosted", client_metadata_allow_loopback=True)
    for url in (docs.url("/client.json"), "https://localhost/client.json"):
        with pytest.raises(MetadataDocumentError):
            asyncio.run(client_metadata.fetch_document(url, hosted))
    assert "/client.json" not in docs.hits  # nothing was ever sent
    https_private = [
        "https://127.0.0.1/c.json",
        "https://10.0.0.8/c.json",
        "https://192.168.1.1/c.json",
        "https://172.16.0.1/c.json",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/c.json",
        "https://0.0.0.0/c.json",
        "https://[::1]/c.json",
        "https://[fd00::1]/c.json",
        "https://[fe80::1]/c.json",
        "https://[::ffff:127.0.0.1]/c.json",
        "https://[::ffff:10.0.0.1]/c.json",
    ]
    for url in https_private:
        with pytest.raises(MetadataDocumentError, match="private or loopback"):
            asyncio.run(client_metadata.fetch_document(url, hosted))


def test_personal_mode_refuses_loopback_unless_allowed(docs: DocServer) -> None:
    with pytest.raises(MetadataDocumentError, match="https"):
        asyncio.run(client_metadata.fetch_document(docs.url("/client.json"), Settings()))
    with pytest.raises(MetadataDocumentError, match="private or loopback"):
        asyncio.run(client_metadata.fetch_document("https://127.0.0.1/c.json", Settings()))


def test_address_rules() -> None:
    hosted = Settings(mode="hosted")
    assert client_metadata.address_allowed("93.184.215.14", hosted)
    assert client_metadata.address_allowed("2606:4700::6810:84e5", hosted)
    for address in ("127.0.0.1", "10.1.2.3", "::1", "fc00::1", "224.0.0.1", "not-an-ip"):
        assert not client_metadata.address_allowed(address, hosted), address


@pytest.mark.parametrize(
    "url",
    [
        "http://app.example/client.json",
        "https://app.example",
        "https://app.example/",
        "https://app.example/a/../client.json",
        "https://app.example/./client.json",
        "https://app.example/client.json#frag",
        "https://user:pw@app.example/client.json",
        "https://app.example/" + "a" * 300,
        "https://app.example/client .json",
        "https://app.example:0/client.json",
    ],
)
def test_client_id_url_rules(url: str) -> None:
    with pytest.raises(MetadataDocumentError):
        client_metadata.check_url(url, Settings(mode="hosted"))


def test_document_cannot_take_over_a_registered_client(kf: InProcess, docs: DocServer) -> None:
    """A stored client of another kind is never rewritten by a fetched document."""
    url = docs.url("/owned.json")
    kf.run(
        kf.store.clients.add,
        name="Owner's app",
        redirect_uris=["https://owner.example/cb"],
        is_public=True,
        secret_hash=None,
        client_id=url,
    )
    client = resolve(kf, url)
    assert client.name == "Owner's app" and "/owned.json" not in docs.hits
    assert json.loads(json.dumps(list(client.redirect_uris))) == ["https://owner.example/cb"]
