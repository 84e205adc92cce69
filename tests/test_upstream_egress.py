"""Hosted SSRF by DNS rebinding (issue 11): a provider's host name that resolved to an
allowed address when it was linked later points somewhere private. The gateway's upstream
connector checks every answer at each connection and connects only to the address it
checked, so the call is refused before any byte leaves, and nothing reaches the new
address.

The resolver is injected (no real DNS) and everything stays on loopback: the allowed
upstream is 127.0.0.1 (``upstream_allow_private``, a deliberately private upstream), the
"rebound" target is a listener on 127.0.0.2 that records who connects. Answers that would
leave loopback (169.254.169.254, smuggled IPv6 forms) are judged without connecting.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from aiohttp import web

from keyfob.context import Keyfob
from keyfob.providers import egress
from keyfob.providers.linking import LinkRefused, link_provider
from keyfob.server import create_app
from keyfob.settings import Settings, UnsafeSettings
from keyfob.settings_checks import check_safe
from tests.support import free_port, grant_token

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
HOST = "llm.rebind.test"
CHAT = {"model": "fake/m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


class Script:
    """Answers with whatever ``answer`` is now, counting the questions."""

    def __init__(self, *answer: str) -> None:
        self.answer = list(answer)
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[tuple[int, str]]:
        assert host == HOST, host  # nothing else is ever resolved here
        self.calls += 1
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in self.answer]


# --- the rule, without connecting -------------------------------------------------------

REFUSED = [
    "169.254.169.254",
    "10.0.0.1",
    "127.0.0.2",
    "::1",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::1",
    "::127.0.0.1",
    "fd00::1",
    "0.0.0.0",
]


@pytest.mark.parametrize("address", REFUSED)
async def test_a_private_answer_is_refused(address: str) -> None:
    resolver = egress.CheckedResolver(egress.parse_allowed(["127.0.0.1/32"]), Script(address))
    with pytest.raises(egress.EgressRefused):
        await resolver.resolve(HOST, 443)


async def test_public_and_allowed_answers_pass_and_are_what_is_connected_to() -> None:
    allow = egress.parse_allowed(["127.0.0.1/32", "10.20.0.0/16"])
    resolver = egress.CheckedResolver(allow, Script("93.184.215.14", "::ffff:10.20.1.2"))
    found = await resolver.resolve(HOST, 443, family=socket.AF_UNSPEC)
    # the mapped form connects to the IPv4 address the check judged
    assert [(r["host"], r["family"]) for r in found] == [
        ("93.184.215.14", socket.AF_INET),
        ("10.20.1.2", socket.AF_INET),
    ]
    assert all(r["flags"] == socket.AI_NUMERICHOST for r in found)


async def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    resolver = egress.CheckedResolver((), Script("93.184.215.14", "169.254.169.254"))
    with pytest.raises(egress.EgressRefused):
        await resolver.resolve(HOST, 443)


def test_a_bad_allow_list_entry_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSettings, match="UPSTREAM_ALLOW_PRIVATE"):
        check_safe(Settings(data_dir=tmp_path, upstream_allow_private=("intranet",)))


def test_the_allow_list_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYFOB_UPSTREAM_ALLOW_PRIVATE", "10.0.0.0/8, fd00::/8")
    assert Settings.from_env().upstream_allow_private == ("10.0.0.0/8", "fd00::/8")


# --- through a hosted gateway -----------------------------------------------------------


class Upstream:
    """An OpenAI-compatible chat upstream on 127.0.0.1 that closes every connection (so
    each call makes a new one, and so asks the connector for an address again)."""

    def __init__(self) -> None:
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _chat(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        resp = web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )
        resp.force_close()
        return resp


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name = f"keyfob_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _serve(
    tmp_path: Path, pg_url: str, resolve: Script
) -> tuple[uvicorn.Server, asyncio.Future[None], str, Keyfob]:
    settings = Settings(
        mode="hosted",
        data_dir=tmp_path / "data",
        database_url=pg_url,
        master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        session_keys=secrets.token_urlsafe(48),
        public_url="http://127.0.0.1:8787",
        upstream_allow_private=("127.0.0.1/32",),
    )
    app = create_app(settings, resolve=resolve)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}", app.state.kf


async def test_a_name_rebound_to_a_private_address_after_linking_is_never_connected_to(
    tmp_path: Path, pg_url: str
) -> None:
    upstream = Upstream()
    await upstream.start()
    assert upstream.runner is not None
    script = Script("127.0.0.1")
    server, task, url, kf = await _serve(tmp_path, pg_url, script)
    try:
        owner = await kf.store.users.create("owner", "x" * 12, is_owner=True)
        # linked while the name resolves to the allowed upstream
        await link_provider(
            kf,
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url=f"http://{HOST}:{upstream.port}/v1",
            api_key=None,
            models=["m"],
            is_local=True,
        )
        minted = await grant_token(
            kf.store, user_id=owner.id, models=["fake/m"], cap_micro_usd=10**6
        )
        auth = {"Authorization": f"Bearer {minted['token']}"}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as c:
            first = await c.post("/v1/chat/completions", json=CHAT)
            assert first.status_code == 200, first.text
            assert upstream.calls == 1

            # the name now points at another loopback address, listened on at the same
            # port: were the answer not checked, the gateway would connect there
            with _listener("127.0.0.2", upstream.port) as seen:
                script.answer = ["127.0.0.2"]
                assert kf.http is not None
                kf.http.connector.clear_dns_cache()  # type: ignore[union-attr]  # (TTL passed)
                refused = await c.post("/v1/chat/completions", json=CHAT)
                assert refused.status_code == 502, refused.text
                assert "127.0.0.2" not in refused.text
                # a mix of allowed and private answers is refused whole
                script.answer = ["127.0.0.1", "127.0.0.2"]
                kf.http.connector.clear_dns_cache()  # type: ignore[union-attr]
                assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 502
                await asyncio.sleep(0.3)
            assert seen == []
            assert upstream.calls == 1

            # and back: the allowed answer serves again
            script.answer = ["127.0.0.1"]
            kf.http.connector.clear_dns_cache()  # type: ignore[union-attr]
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert upstream.calls == 2
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        await upstream.runner.cleanup()


async def test_a_stored_private_literal_is_refused_at_connection(
    tmp_path: Path, pg_url: str
) -> None:
    """A provider stored with a private address (linked before the rule, or by a path that
    skipped the link check) is refused by the connector itself: aiohttp connects to
    address literals without asking a resolver."""
    script = Script("127.0.0.1")
    server, task, url, kf = await _serve(tmp_path, pg_url, script)
    port = free_port()
    try:
        owner = await kf.store.users.create("owner", "x" * 12, is_owner=True)
        await kf.store.providers.add(
            user_id=owner.id,
            name="old",
            kind="openai_compatible",
            base_url=f"http://127.0.0.2:{port}/v1",
            credential_envelope=None,
            credential_kind="none",
            is_local=True,
            models=["m"],
        )
        minted = await grant_token(
            kf.store, user_id=owner.id, models=["old/m"], cap_micro_usd=10**6
        )
        auth = {"Authorization": f"Bearer {minted['token']}"}
        body = dict(CHAT, model="old/m")
        with _listener("127.0.0.2", port) as seen:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as c:
                resp = await c.post("/v1/chat/completions", json=body)
            await asyncio.sleep(0.3)
        assert resp.status_code == 502, resp.text
        assert seen == []
        assert script.calls == 0
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def test_linking_checks_with_the_same_rule_and_resolver(tmp_path: Path, pg_url: str) -> None:
    script = Script("169.254.169.254")
    server, task, _url, kf = await _serve(tmp_path, pg_url, script)
    try:
        owner = await kf.store.users.create("owner", "x" * 12, is_owner=True)
        args: dict[str, Any] = {
            "user_id": owner.id,
            "name": "meta",
            "kind": "openai_compatible",
            "api_key": None,
            "models": ["m"],
        }
        with pytest.raises(LinkRefused, match="private"):
            await link_provider(kf, base_url=f"https://{HOST}/v1", **args)
        with pytest.raises(LinkRefused, match="private"):
            await link_provider(kf, base_url="http://127.0.0.2:9/v1", **args)
        assert script.calls == 1
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class _listener:
    """``with _listener(host, port) as seen``: who connected to (host, port) meanwhile."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.seen.append(peer[0])
            conn.close()

    def __enter__(self) -> list[str]:
        self.thread.start()
        return self.seen

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
