"""A scriptable local upstream (aiohttp, own thread and loop) for in-process gateway tests.

Each provider gets its own path prefix, and the prefix's name says how it behaves:
``down*`` answers 503, ``busy*`` 429, ``slow*`` sends nothing for ``SLOW_S``, anything
else answers like an OpenAI chat-completions server (``n`` choices, ``logprobs`` when
asked, usage, SSE when streamed). ``/or/...`` is a fake openrouter.ai: the PKCE key
exchange (``POST /or/api/v1/auth/keys``) and a model list. ``/keyed/v1/models`` lists
models for one key only (401 for any other). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SLOW_S = 1.0
OPENROUTER_KEY = "sk-or-v1-" + "c" * 40
#: The one key ``/keyed/...`` accepts, and the models it lists.
KEYED_KEY = "sk-keyed-" + "d" * 32
KEYED_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "o3-mini",
    "text-embedding-3-small",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
)


@dataclass
class Seen:
    name: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeUpstream:
    seen: list[Seen] = field(default_factory=list)
    #: code -> S256 challenge the fake openrouter.ai issued it for.
    codes: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def bodies(self, name: str) -> list[Any]:
        return [s.body for s in self.seen if s.name == name]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.json()
        self.seen.append(Seen(name, request.path, dict(request.headers), body))
        if name.startswith("down"):
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if name.startswith("busy"):
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        if name.startswith("slow"):
            await asyncio.sleep(SLOW_S)
        n = body.get("n") or 1
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": f"{name} answer {i}"},
                "finish_reason": "stop",
            }
            if body.get("logprobs"):
                top = [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in (("a", -0.1), ("b", -2.5))
                ][: body.get("top_logprobs") or 1]
                choice["logprobs"] = {
                    "content": [
                        {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": top}
                    ],
                    "refusal": None,
                }
            choices.append(choice)
        usage = {"prompt_tokens": 10, "completion_tokens": 2 * n, "total_tokens": 10 + 2 * n}
        answer = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model"),
            "choices": choices,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": body.get("model"),
            "choices": [
                {"index": 0, "delta": {"content": f"{name} answer 0"}, "finish_reason": "stop"}
            ],
        }
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        tail = {**chunk, "choices": [], "usage": usage}
        await resp.write(f"data: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "openai/gpt-4o-mini"}]})

    async def _keyed_models(self, request: web.Request) -> web.Response:
        """``/keyed/v1/models``: a provider that checks its key (401 for any other)."""
        self.seen.append(Seen("keyed", request.path, dict(request.headers), None))
        if request.headers.get("Authorization") != f"Bearer {KEYED_KEY}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": m} for m in KEYED_MODELS]})

    async def _keys(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(Seen("or", request.path, dict(request.headers), body))
        digest = hashlib.sha256(str(body.get("code_verifier")).encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if self.codes.get(str(body.get("code"))) != challenge:
            return web.json_response({"error": {"message": "invalid code"}}, status=403)
        return web.json_response({"key": OPENROUTER_KEY, "user_id": "user_1"})

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/or/api/v1/auth/keys", self._keys)
        app.router.add_get("/or/api/v1/models", self._models)
        app.router.add_get("/keyed/v1/models", self._keyed_models)
        app.router.add_post("/{name}/v1/chat/completions", self._chat)
        app.router.add_post("/{name}/api/v1/chat/completions", self._chat)
        app.router.add_post("/{name}/v1beta/openai/chat/completions", self._chat)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
