"""Revocation applies to the next request, everywhere (issue 10; invariant 4).

Every bearer endpoint (the metered ones, ``/v1/models``, ``/v1/messages/count_tokens``,
``/v1/keyfob/*``) is called with a live token, the grant (or only the token, as a
refresh-token replay does) is revoked, and every endpoint is called again; a stream in
flight is cut, its upstream connection closed and its call settled, within one second.

Revoked from another process (a separate store on the same SQLite file, as the CLI's
``keyfob apps revoke`` does; the CLI itself in one test) against a real ``keyfob serve``;
and in the serving process (``GrantsRepo.revoke``, what the web page's revoke button
calls) against an in-process server, on SQLite and on PostgreSQL. Every bearer endpoint
refuses the very next request on both (PostgreSQL: the endpoints that reserve nothing read
token and grant on each request; the metered ones re-check them in the reservation).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from aiohttp import web

from keyfob.context import Keyfob
from keyfob.providers.linking import link_provider
from keyfob.server import create_app
from keyfob.settings import Settings
from keyfob.store import Store
from tests.support import KeyfobServer, cli, free_port, grant_token, ledger_rows

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "drip/gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]
#: Every bearer endpoint, with a body it accepts; those that reserve nothing first (a
#: metered call's reservation re-checks the token itself, and evicts what it finds gone).
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/keyfob/allowance", None),
    ("GET", "/v1/keyfob/usage", None),
    ("POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": HELLO}),
    ("POST", "/v1/keyfob/quote", {"model": MODEL, "max_tokens": 5, "messages": HELLO}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 5, "messages": HELLO}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "hello", "max_output_tokens": 16}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "hello"}),
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": HELLO}),
]
#: The revocation bound of invariant 4.
CUT_WITHIN_S = 1.0


@dataclass
class DripUpstream:
    """An OpenAI-compatible upstream whose streams send one chunk every 50 ms for a
    minute (a long answer), recording when each stream's connection went away."""

    port: int = 0
    streams_started: int = 0
    closed_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/embeddings", self._embeddings)
            runner = web.AppRunner(app)
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _embeddings(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chunk = {
            "id": "chatcmpl-drip",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}],
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-drip",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hi"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            )
        self.streams_started += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(1200):
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_at.append(time.time())
            raise
        return resp

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def drip() -> Iterator[DripUpstream]:
    up = DripUpstream()
    yield up
    up.stop()


async def link_drip(kf: Keyfob, user_id: str, drip: DripUpstream) -> None:
    provider = await link_provider(
        kf,
        user_id=user_id,
        name="drip",
        kind="openai_compatible",
        base_url=drip.base_url,
        api_key="sk-drip-upstream-key",
        models=["gpt-4o-mini"],
    )
    await kf.store.providers.set_price(
        provider.id,
        "gpt-4o-mini",
        input_micro_usd_per_mtok=150_000,
        output_micro_usd_per_mtok=600_000,
    )


async def statuses(client: httpx.AsyncClient, token: str) -> dict[str, int]:
    """Every endpoint's status; the first one (``/v1/models``) is the last answered
    before, so a cache entry for the token is fresh when this runs after a revoke."""
    out = {}
    for method, path, body in ENDPOINTS:
        resp = await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        out[path] = resp.status_code
    return out


async def warm(client: httpx.AsyncClient, token: str) -> None:
    """A bearer call right before the revoke: the token's cache entry is fresh."""
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200


async def open_stream(
    client: httpx.AsyncClient, token: str
) -> tuple[httpx.Response, asyncio.Task[tuple[bytes, float]]]:
    """Starts a stream, waits for its first bytes; the task reads it to its end and
    returns (everything read, when it ended)."""
    req = client.build_request(
        "POST",
        "/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 4000, "stream": True, "messages": HELLO},
        headers={"Authorization": f"Bearer {token}"},
    )
    resp = await client.send(req, stream=True)
    assert resp.status_code == 200
    chunks = resp.aiter_raw()
    first = await chunks.__anext__()

    async def rest() -> tuple[bytes, float]:
        got = [first]
        async for chunk in chunks:
            got.append(chunk)
        return b"".join(got), time.time()

    return resp, asyncio.ensure_future(rest())


def assert_cut(
    read: bytes, ended_at: float, revoked_at: float, drip: DripUpstream, closed_before: int
) -> None:
    """The stream ended within the bound with an error event saying why, and its
    upstream connection was closed (the upstream stops generating, and billing)."""
    assert ended_at - revoked_at < CUT_WITHIN_S, f"cut {ended_at - revoked_at:.2f} s late"
    assert b"revoked" in read[-600:], read[-600:]
    assert b"[DONE]" not in read
    deadline = time.time() + 5
    while len(drip.closed_at) == closed_before and time.time() < deadline:
        time.sleep(0.02)
    assert len(drip.closed_at) > closed_before, "the upstream connection stayed open"
    assert drip.closed_at[-1] - revoked_at < CUT_WITHIN_S + 0.5


# --- a real ``keyfob serve``, revoked from other processes --------------------------------


async def _mint(data_dir: Path, drip: DripUpstream, name: str) -> dict[str, Any]:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        if not await kf.store.providers.list(owner.id):
            await link_drip(kf, owner.id, drip)
        return await grant_token(
            kf.store,
            user_id=owner.id,
            models=[MODEL],
            cap_micro_usd=10_000_000,
            client_name=name,
            timezone=owner.timezone,
        )
    finally:
        await kf.close()


async def _revoke(data_dir: Path, grant_id: str | None, token: str | None) -> float:
    """Revoke from this process (another process than the server's); returns when the
    revocation was committed."""
    from keyfob.tokens import hash_token

    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        if grant_id is not None:
            await store.grants.revoke(grant_id)
        if token is not None:
            found = await store.tokens.get(hash_token(token))
            assert found is not None
            await store.tokens.revoke_family(found.family_id)  # what a replay does
        return time.time()
    finally:
        await store.close()


@pytest.mark.parametrize("what", ["grant", "token family"])
def test_every_bearer_endpoint_refuses_the_next_request_after_another_process_revokes(
    server: KeyfobServer, drip: DripUpstream, what: str
) -> None:
    minted = asyncio.run(_mint(server.data_dir, drip, f"app-{what}"))

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            before = await statuses(c, minted["token"])
            assert 401 not in before.values(), before
            await warm(c, minted["token"])
            await _revoke(
                server.data_dir,
                minted["grant_id"] if what == "grant" else None,
                minted["token"] if what != "grant" else None,
            )
            after = await statuses(c, minted["token"])
            assert set(after.values()) == {401}, after

    asyncio.run(run())


def test_keyfob_apps_revoke_cuts_a_stream_in_flight_within_a_second(
    server: KeyfobServer, drip: DripUpstream
) -> None:
    """The CLI itself, in its own process: every bearer endpoint refuses right after it
    exits, and the stream in flight ends within a second of its commit."""
    minted = asyncio.run(_mint(server.data_dir, drip, "Cut App"))

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            resp, rest = await open_stream(c, minted["token"])
            closed_before = len(drip.closed_at)
            result = await asyncio.to_thread(cli, server.data_dir, "apps", "revoke", "Cut App")
            # the CLI commits before it exits: the cut is measured from its exit (an
            # upper bound of the time since the commit would be larger still)
            exited_at = time.time()
            read, ended_at = await asyncio.wait_for(rest, 10)
            await resp.aclose()
            assert ended_at - exited_at < CUT_WITHIN_S, result.stdout
            assert_cut(read, ended_at, exited_at, drip, closed_before)
            after = await statuses(c, minted["token"])
            assert set(after.values()) == {401}, after

    asyncio.run(run())
    (row,) = [r for r in ledger_rows(server.data_dir) if r["streamed"]]
    assert row["status"] != "reserved"


def test_a_stream_in_flight_is_cut_within_a_second_of_a_revoke_by_another_process(
    server: KeyfobServer, drip: DripUpstream
) -> None:
    minted = asyncio.run(_mint(server.data_dir, drip, "app"))

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            resp, rest = await open_stream(c, minted["token"])
            closed_before = len(drip.closed_at)
            await asyncio.sleep(0.3)
            revoked_at = await _revoke(server.data_dir, minted["grant_id"], None)
            read, ended_at = await asyncio.wait_for(rest, 10)
            await resp.aclose()
            assert_cut(read, ended_at, revoked_at, drip, closed_before)

    asyncio.run(run())
    rows = ledger_rows(server.data_dir)
    (row,) = [r for r in rows if r["streamed"]]
    assert row["status"] != "reserved" and row["error"] and "revoked" in row["error"]


# --- in the serving process (the web page's revoke), on SQLite and PostgreSQL -------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'keyfob.db'}"
        return
    name = f"keyfob_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def served(
    tmp_path: Path, database_url: str, drip: DripUpstream
) -> AsyncIterator[tuple[str, Keyfob, dict[str, Any]]]:
    """``create_app`` under uvicorn in this test's loop: (base URL, its Keyfob, a token)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    kf: Keyfob = app.state.kf
    owner = await kf.store.users.create("owner", "x", is_owner=True)
    await link_drip(kf, owner.id, drip)
    minted = await grant_token(kf.store, user_id=owner.id, models=[MODEL], cap_micro_usd=10**7)
    try:
        yield f"http://127.0.0.1:{port}", kf, minted
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def test_every_bearer_endpoint_after_a_revoke_in_the_serving_process(
    served: tuple[str, Keyfob, dict[str, Any]],
) -> None:
    url, kf, minted = served
    owner = await kf.store.users.owner()
    assert owner is not None
    # one app per endpoint, each token's cache entry fresh from a call right before the
    # revoke, so each endpoint meets a stale entry of its own (not one another endpoint's
    # refusal already evicted)
    apps = [minted] + [
        await grant_token(kf.store, user_id=owner.id, models=[MODEL], cap_micro_usd=10**7)
        for _ in ENDPOINTS[1:]
    ]
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        before = await statuses(c, minted["token"])
        assert 401 not in before.values(), before
        for app in apps:
            await warm(c, app["token"])
        for app in apps:
            await kf.store.grants.revoke(app["grant_id"])  # the web page's revoke button
        revoked_at = time.monotonic()
        for app, (method, path, body) in zip(apps, ENDPOINTS, strict=True):
            resp = await c.request(
                method, path, json=body, headers={"Authorization": f"Bearer {app['token']}"}
            )
            assert resp.status_code == 401, (path, resp.status_code, resp.text)
        assert time.monotonic() - revoked_at < CUT_WITHIN_S
        after = await statuses(c, minted["token"])
        assert set(after.values()) == {401}, after


async def test_a_stream_is_cut_within_a_second_of_a_revoke_in_the_serving_process(
    served: tuple[str, Keyfob, dict[str, Any]], drip: DripUpstream
) -> None:
    url, kf, minted = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp, rest = await open_stream(c, minted["token"])
        closed_before = len(drip.closed_at)
        await asyncio.sleep(0.3)
        await kf.store.grants.revoke(minted["grant_id"])
        revoked_at = time.time()
        read, ended_at = await asyncio.wait_for(rest, 10)
        await resp.aclose()
        await asyncio.to_thread(assert_cut, read, ended_at, revoked_at, drip, closed_before)
    entries = await kf.store.ledger.entries(grant_id=minted["grant_id"])
    streamed = [e for e in entries if e.streamed]
    assert len(streamed) == 1 and streamed[0].status != "reserved"


# --- cap and window changes apply to the next request, too --------------------------------


def test_a_window_switched_from_the_cli_applies_to_the_next_call_with_the_spend(
    server: KeyfobServer, drip: DripUpstream
) -> None:
    """``keyfob apps policy`` (another process) moves a grant from a monthly cap to a
    weekly one just above what was spent, then back: the very next call is refused each
    time (the new window starts with the ledger's spend, and the server plans with the
    edited grant at once, not a cached one)."""
    from decimal import Decimal

    minted = asyncio.run(_mint(server.data_dir, drip, "Cap App"))
    auth = {"Authorization": f"Bearer {minted['token']}"}
    chat = {"model": MODEL, "max_tokens": 5, "messages": HELLO}
    with httpx.Client(base_url=server.url, timeout=30, headers=auth) as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=chat).status_code == 200
        (month,) = c.get("/v1/keyfob/allowance").json()["limits"]
        spent = Decimal(month["spent_usd"])
        assert spent > 0
        just_above = str(spent + Decimal("0.000001"))
        cli(server.data_dir, "apps", "policy", "Cap App", "--month", "off", "--week", just_above)
        refused = c.post("/v1/chat/completions", json=chat)
        assert refused.status_code == 429, refused.text
        (week,) = c.get("/v1/keyfob/allowance").json()["limits"]
        assert week["limit"] == "week" and Decimal(week["spent_usd"]) == spent
        cli(server.data_dir, "apps", "policy", "Cap App", "--week", "off", "--month", just_above)
        assert c.post("/v1/chat/completions", json=chat).status_code == 429
        cli(server.data_dir, "apps", "policy", "Cap App", "--month", "1")
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
