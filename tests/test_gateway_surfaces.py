"""Every surface, with the official SDKs, over upstreams of both wire formats.

One Keyfob server for the module: ``fake`` (OpenAI wire) and ``claude`` (Anthropic wire)
both served by the session's fakellm, plus a scripted aiohttp upstream (``stub``) for
timing and byte-fidelity checks fakellm cannot script.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from keyfob.context import Keyfob
from keyfob.gateway import headers as h
from keyfob.providers.linking import LinkRefused, link_provider
from keyfob.settings import Settings
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.support import FakeLLM, KeyfobServer, cli, ledger_rows, mint_token

OAI = "fake/gpt-4o-mini"
CLAUDE = "claude/claude-3-5-haiku-latest"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


#: What the stub streams, split in two: the first part, a pause, then the rest.
OPENAI_PARTS = (
    _sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "first "}, "finish_reason": None}],
        }
    ),
    _sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "second"}, "finish_reason": "stop"}],
        }
    )
    + _sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        }
    )
    + b"data: [DONE]\n\n",
)
ANTHROPIC_PARTS = (
    _sse(
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "m",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 4, "output_tokens": 1},
            },
        },
        "message_start",
    )
    + _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    + _sse(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        "content_block_delta",
    ),
    _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    + _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        "message_delta",
    )
    + _sse({"type": "message_stop"}, "message_stop"),
)
PAUSE_S = 0.8


class Stub:
    """A local aiohttp upstream on its own thread and loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    async def _stream(self, request: web.Request, parts: tuple[bytes, bytes]) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(parts[0])
        await asyncio.sleep(PAUSE_S)
        await resp.write(parts[1])
        await resp.write_eof()
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):  # a whole answer, without usage
            return web.json_response(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "whole answer"},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        return await self._stream(request, OPENAI_PARTS)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, ANTHROPIC_PARTS)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = len(body["input"]) if isinstance(body["input"], list) else 1
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(n)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": 3 * n, "total_tokens": 3 * n},
            }
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _link_all(data_dir: Path, fake: str, stub: str) -> None:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        for name, kind, url, key, models, local in [
            (
                "fake",
                "openai_compatible",
                fake,
                "sk-test-0000000000000000000000",
                ["gpt-4o-mini"],
                False,
            ),
            ("claude", "anthropic", fake, "sk-ant-api03-test", ["claude-3-5-haiku-latest"], False),
            ("stub", "openai_compatible", stub, None, ["m", "embed"], True),
            ("stubant", "anthropic", stub, "sk-ant-api03-stub", ["m"], True),
        ]:
            await link_provider(
                kf,
                user_id=owner.id,
                name=name,
                kind=kind,
                base_url=url,
                api_key=key,
                models=models,
                is_local=local,
            )
        with pytest.raises(LinkRefused, match="sk-ant-api"):
            await link_provider(
                kf,
                user_id=owner.id,
                name="subscription",
                kind="anthropic",
                base_url="",
                api_key="sk-ant-oat01-abc",
                models=[],
            )
    finally:
        await kf.close()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, fakellm: FakeLLM
) -> Iterator[tuple[KeyfobServer, str, Stub]]:
    data_dir = tmp_path_factory.mktemp("surfaces") / "data"
    data_dir.mkdir()
    cli(data_dir, "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
    stub = Stub()
    asyncio.run(_link_all(data_dir, fakellm.base_url, stub.base_url))
    models = [OAI, CLAUDE, "stub/m", "stub/embed", "stubant/m"]
    token = str(mint_token(data_dir, models=models, cap_micro_usd=10_000_000)["token"])
    srv = KeyfobServer(data_dir).start()
    try:
        yield srv, token, stub
    finally:
        srv.stop()
        stub.close()


def row(server: KeyfobServer, entry_id: str) -> dict[str, Any]:
    [found] = [r for r in ledger_rows(server.data_dir) if r["id"] == entry_id]
    return found


def ac(gw: tuple[KeyfobServer, str, Stub], **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw[0].url, api_key=gw[1], max_retries=0, **kw)


def oc(gw: tuple[KeyfobServer, str, Stub]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw[0].url + "/v1", api_key=gw[1], max_retries=0)


@pytest.mark.parametrize("model", [CLAUDE, OAI])
def test_anthropic_sdk_messages(gw: tuple[KeyfobServer, str, Stub], model: str) -> None:
    with ac(gw) as c:
        raw = c.messages.with_raw_response.create(
            model=model,
            max_tokens=100,
            system="You are terse.",
            messages=[{"role": "user", "content": "hello"}],
        )
        msg = raw.parse()
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hi there! This is a mock response from fakellm."
    assert msg.stop_reason == "end_turn"
    # same format: the upstream's answer is relayed as is; translated: the requested name
    assert msg.model == (model.split("/", 1)[1] if model == CLAUDE else model)
    r = row(gw[0], raw.headers[h.REQUEST_ID])
    assert (r["status"], r["usage_source"], r["endpoint"]) == ("settled", "upstream", "messages")
    assert r["output_tokens"] == msg.usage.output_tokens > 0
    assert r["cost_micro_usd"] > 0 and raw.headers[h.COST] == f"0.{r['cost_micro_usd']:06d}"


@pytest.mark.parametrize("model", [CLAUDE, OAI])
def test_anthropic_sdk_stream_with_tools(gw: tuple[KeyfobServer, str, Stub], model: str) -> None:
    with (
        ac(gw, auth_token=None) as c,
        c.messages.stream(
            model=model,
            max_tokens=200,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        ) as stream,
    ):
        final = stream.get_final_message()
        entry = stream.response.headers[h.REQUEST_ID]
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    r = row(gw[0], entry)
    assert r["streamed"] is True and r["status"] in ("settled", "estimated")
    assert 0 < r["cost_micro_usd"] <= r["reserved_micro_usd"]


def test_anthropic_tool_result_round_trip_over_openai(gw: tuple[KeyfobServer, str, Stub]) -> None:
    with ac(gw) as c:
        msg = c.messages.create(
            model=OAI,
            max_tokens=50,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                        {"type": "text", "text": "hello"},
                    ],
                },
            ],
        )
    assert msg.content


def test_anthropic_bearer_token_and_errors(gw: tuple[KeyfobServer, str, Stub]) -> None:
    server, token, _ = gw
    with anthropic.Anthropic(base_url=server.url, auth_token=token, max_retries=0) as c:
        msg = c.messages.create(
            model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "hello"}]
        )
        assert msg.content
        with pytest.raises(anthropic.NotFoundError) as nf:
            c.messages.create(
                model="nope", max_tokens=20, messages=[{"role": "user", "content": "hello"}]
            )
        assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        count = c.messages.count_tokens(
            model=CLAUDE, messages=[{"role": "user", "content": "hello there"}]
        )
        assert count.input_tokens > 0
    with (
        anthropic.Anthropic(base_url=server.url, api_key="kfat_bad", max_retries=0) as c,
        pytest.raises(anthropic.AuthenticationError) as auth,
    ):
        c.messages.create(
            model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "hello"}]
        )
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bad = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": token},
        json={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": bad.json()["error"]["message"]},
    }
    assert "max_tokens" in bad.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_served_by_anthropic_model(
    gw: tuple[KeyfobServer, str, Stub], stream: bool
) -> None:
    with oc(gw) as c:
        if stream:
            with c.chat.completions.create(
                model=CLAUDE,
                messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                tools=[OAI_TOOL],  # type: ignore[list-item]
                stream=True,
                stream_options={"include_usage": True},
            ) as s:
                chunks = list(s)
            calls = [
                tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []
            ]
            args = "".join(tc.function.arguments or "" for tc in calls if tc.function)
            assert calls[0].function and calls[0].function.name == "get_weather"
            assert json.loads(args) == {"city": "Paris"}
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        else:
            done = c.chat.completions.create(
                model=CLAUDE,
                messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                tools=[OAI_TOOL],  # type: ignore[list-item]
            )
            [call] = done.choices[0].message.tool_calls or []
            assert call.function.name == "get_weather"  # type: ignore[union-attr]
            assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
            assert done.choices[0].finish_reason == "tool_calls"
            assert done.usage is not None and done.usage.prompt_tokens > 0


def test_responses_api(gw: tuple[KeyfobServer, str, Stub]) -> None:
    with oc(gw) as c:
        for model in (OAI, CLAUDE):
            resp = c.responses.create(model=model, input="hello", max_output_tokens=50)
            assert resp.output_text == "Hi there! This is a mock response from fakellm."
            with c.responses.create(model=model, input="hello", stream=True) as s:
                events = list(s)
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert text == "Hi there! This is a mock response from fakellm."
        tooled = c.responses.create(
            model=OAI,
            input="What is the weather in Paris?",
            tools=[
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": WEATHER_TOOL["input_schema"],
                    "strict": False,
                }
            ],
        )
        [call] = [o for o in tooled.output if o.type == "function_call"]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        with pytest.raises(openai.BadRequestError):
            c.responses.create(model=OAI, input="x", previous_response_id="resp_1")
    rows = [r for r in ledger_rows(gw[0].data_dir) if r["endpoint"] == "responses"]
    assert len(rows) == 5 and all(r["status"] in ("settled", "estimated") for r in rows)


def test_responses_stream_always_ends_with_usage(gw: tuple[KeyfobServer, str, Stub]) -> None:
    """``response.completed`` carries usage on every stream: the upstream's own report
    (stub, Anthropic over fakellm), or Keyfob's count, flagged, when the upstream sent none
    (fakellm's OpenAI streams), the same count the ledger settled."""
    with oc(gw) as c:
        for model, estimated in ((OAI, True), (CLAUDE, False), ("stub/m", False)):
            raw = c.responses.with_raw_response.create(model=model, input="hello", stream=True)
            with raw.parse() as s:
                events = list(s)
            done = events[-1]
            assert done.type == "response.completed"
            usage = done.response.usage
            assert usage is not None and usage.output_tokens > 0 and usage.input_tokens > 0
            assert usage.total_tokens == usage.input_tokens + usage.output_tokens
            extra = usage.model_extra or {}
            assert extra.get("keyfob_estimated", False) is estimated, model
            entry = row(gw[0], raw.headers[h.REQUEST_ID])
            assert entry["usage_source"] == ("estimated" if estimated else "upstream")
            assert (entry["input_tokens"], entry["output_tokens"]) == (
                usage.input_tokens,
                usage.output_tokens,
            )
        # a whole answer without usage, translated: Keyfob's count, flagged, too
        whole = c.responses.with_raw_response.create(model="stub/m", input="hello")
        usage = whole.parse().usage
        assert usage is not None and (usage.model_extra or {}).get("keyfob_estimated") is True
        entry = row(gw[0], whole.headers[h.REQUEST_ID])
        assert (entry["usage_source"], entry["output_tokens"]) == ("estimated", usage.output_tokens)
    with ac(gw) as a:
        msg = a.messages.create(
            model="stub/m", max_tokens=20, messages=[{"role": "user", "content": "hello"}]
        )
    assert msg.content[0].text == "whole answer"  # type: ignore[union-attr]
    assert msg.usage.output_tokens > 0 and (msg.usage.model_extra or {})["keyfob_estimated"]


def test_embeddings(gw: tuple[KeyfobServer, str, Stub]) -> None:
    with oc(gw) as c:
        raw = c.embeddings.with_raw_response.create(model="stub/embed", input=["a", "b"])
        emb = raw.parse()
        assert len(emb.data) == 2
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model="stub/embed", input=[])
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model="stubant/m", input="a")
    r = row(gw[0], raw.headers[h.REQUEST_ID])
    assert (r["input_tokens"], r["output_tokens"], r["endpoint"]) == (6, 0, "embeddings")


def test_models_lists_the_grant_for_both_sdks(gw: tuple[KeyfobServer, str, Stub]) -> None:
    with oc(gw) as c:
        ids = [m.id for m in c.models.list()]
    assert OAI in ids and CLAUDE in ids
    with ac(gw) as a:
        assert CLAUDE in [m.id for m in a.models.list()]


@pytest.mark.parametrize(
    ("path", "model", "parts"),
    [
        ("/v1/chat/completions", "stub/m", OPENAI_PARTS),
        ("/v1/messages", "stubant/m", ANTHROPIC_PARTS),
    ],
)
def test_same_format_relay_is_byte_identical_and_not_buffered(
    gw: tuple[KeyfobServer, str, Stub], path: str, model: str, parts: tuple[bytes, bytes]
) -> None:
    server, token, _ = gw
    body = {
        "model": model,
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
        "stream_options": {"include_usage": True},
    }
    if path == "/v1/messages":
        del body["stream_options"]
    started = time.monotonic()
    received: list[tuple[float, bytes]] = []
    with httpx.stream(
        "POST", server.url + path, json=body, headers={"x-api-key": token}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            received.append((time.monotonic() - started, chunk))
    assert received[0][0] < PAUSE_S < received[-1][0]
    data = b"".join(c for _t, c in received)
    comment = [ln for ln in data.split(b"\n") if ln.startswith(b": keyfob-cost-usd=")]
    assert len(comment) == 1
    assert data.replace(comment[0] + b"\n", b"") == parts[0] + parts[1]
    r = row(server, resp.headers[h.REQUEST_ID])
    assert (r["status"], r["input_tokens"], r["output_tokens"]) == ("settled", 4, 2)
