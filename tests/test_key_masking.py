"""A hostile upstream echoes the provider key it was sent in every position an answer can
carry (issue 11): each string of an error body (message, code, type, param, extra
fields), passed rate-limit headers, mid-stream error events, content deltas and whole
answers; on chat, messages and responses, streamed and not, same format and translated.
The app must never see the key."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from keyfob.gateway.upstream_errors import mask, passed_headers, upstream_error
from tests.gateway_inproc import ledger, link, mint
from tests.oauth_app import InProcess

OPENAI_KEY = "sk-proj-" + "EchoMe0123456789" * 3
ANTHROPIC_KEY = "sk-ant-api03-" + "EchoMe0123456789" * 3
MODES = ["error", "error_headers", "stream_error", "stream_content", "whole_content"]


def key_of(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ") or request.headers.get("x-api-key", "")


def sse(*events: dict[str, Any], named: bool = False) -> bytes:
    out = b""
    for e in events:
        if named:
            out += f"event: {e['type']}\n".encode()
        out += b"data: " + json.dumps(e).encode() + b"\n\n"
    return out


class EchoUpstream:
    """Speaks OpenAI chat completions at /oa-MODE and Anthropic messages at /an-MODE."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/{prefix}/chat/completions", self.chat)
            app.router.add_post("/{prefix}/messages", self.messages)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @staticmethod
    def error_response(key: str, *, anthropic: bool, headers: bool) -> web.Response:
        err = {"message": f"bad key {key}", "type": key, "code": key, "param": key, "k": key}
        body = {"type": "error", "error": err} if anthropic else {"error": err}
        extra = (
            {
                "x-ratelimit-remaining-requests": f"0 for {key}",
                f"x-ratelimit-{key.lower()}": "1",
                "anthropic-ratelimit-tokens-reset": key,
                "retry-after-ms": key,
            }
            if headers
            else {}
        )
        return web.json_response(body, status=429 if headers else 400, headers=extra)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["prefix"].split("-", 1)[1]
        key = key_of(request)
        body = await request.json()
        if mode in ("error", "error_headers"):
            return self.error_response(key, anthropic=False, headers=mode == "error_headers")
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        text = f"your key is {key}" if mode != "stream_error" else "partial"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": f"chatcmpl-{key}",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        await resp.write(
            sse(
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]}
            )
        )
        if mode == "stream_error":
            err = {"message": f"boom {key}", "type": key, "code": key, "param": key}
            await resp.write(sse({"error": err}))
            return resp
        await resp.write(
            sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        await resp.write(sse({**base, "choices": [], "usage": usage}) + b"data: [DONE]\n\n")
        return resp

    async def messages(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["prefix"].split("-", 1)[1]
        key = key_of(request)
        body = await request.json()
        if mode in ("error", "error_headers"):
            return self.error_response(key, anthropic=True, headers=mode == "error_headers")
        text = f"your key is {key}" if mode != "stream_error" else "partial"
        usage = {"input_tokens": 3, "output_tokens": 4}
        message = {
            "id": f"msg_{key}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = {**message, "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}
        await resp.write(
            sse(
                {"type": "message_start", "message": start},
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
                named=True,
            )
        )
        if mode == "stream_error":
            err = {"type": "error", "error": {"type": key, "message": f"overloaded {key}"}}
            await resp.write(sse(err, named=True))
            return resp
        await resp.write(
            sse(
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 4},
                },
                {"type": "message_stop"},
                named=True,
            )
        )
        return resp


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def kf(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp("mask") / "data", models=()) as app:
        base = f"http://127.0.0.1:{echo.port}"
        for mode in MODES:
            name = mode.replace("_", "")
            link(app, f"oa{name}", f"{base}/oa-{mode}", models=["m"], api_key=OPENAI_KEY)
            link(
                app,
                f"an{name}",
                f"{base}/an-{mode}",
                models=["m"],
                kind="anthropic",
                api_key=ANTHROPIC_KEY,
            )
        yield app


def body_for(path: str, model: str, stream: bool) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"model": model, "input": "hi", "stream": stream}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    if path == "/v1/messages":
        body["max_tokens"] = 16
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("wire", ["oa", "an"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
@pytest.mark.parametrize("mode", MODES)
def test_echoed_key_never_reaches_the_app(
    kf: InProcess, mode: str, path: str, wire: str, stream: bool
) -> None:
    if mode.startswith("stream") and not stream:
        pytest.skip("a stream-only position")
    provider = f"{wire}{mode.replace('_', '')}"
    token = mint(kf, [f"{provider}/m"], client_name=f"{provider}{path}{stream}")
    answer = kf.client.post(
        path,
        json=body_for(path, f"{provider}/m", stream),
        headers={"Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"},
    )
    seen = answer.text + json.dumps(dict(answer.headers))
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        assert key not in seen, (mode, path, wire, stream, seen[:2000])
        assert key.lower() not in seen.lower()
    if mode.startswith("error"):
        assert answer.status_code in (400, 429, 502), answer.text
        assert "***" in answer.text
        if mode == "error_headers":
            assert any("***" in v for k, v in answer.headers.items() if "ratelimit" in k)
    else:
        assert answer.status_code == 200, answer.text
        assert "***" in answer.text, answer.text[:2000]


def test_mask_units() -> None:
    key = OPENAI_KEY
    assert mask(f"a {key} b {key}", key) == "a *** b ***"
    assert mask("short x", "x") == "short x"  # a one-letter "key" would mangle everything
    err = upstream_error(
        400,
        json.dumps({"error": {"message": key, "code": key, "type": key}}).encode(),
        api_key=key,
        retry_after=None,
        provider_name="p",
    )
    assert key not in json.dumps(err.__dict__, default=str)
    headers = passed_headers({"x-ratelimit-limit": key, f"x-ratelimit-{key}": "1"}, key)
    assert headers == {"x-ratelimit-limit": "***"}


def test_no_key_in_the_ledger_or_on_disk(kf: InProcess) -> None:
    """What the echoes left behind: the ledger rows and every file of the data dir."""
    rows = ledger(kf)
    assert rows and "upstream" in json.dumps(list(rows.values()), default=str)
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        assert key not in json.dumps(list(rows.values()), default=str)
        for f in kf.data_dir.iterdir():
            if f.is_file():
                assert key.encode() not in f.read_bytes(), f.name
