"""Streaming relay: upstream SSE events go to the client as they arrive, metered on the side.

Events are cut at their blank-line boundary; a watcher reads the upstream's usage and a
transform passes them on (same format: unchanged bytes, bar the usage chunk Keyfob asked
for and the client did not) or translates them (``streams.py``). An SSE comment
``: keyfob-cost-usd=...`` precedes the terminal event (``data: [DONE]``, Anthropic's
``message_stop``, ``response.completed``; SDK parsers ignore comments) so a client can read
the exact cost. Settlement happens before the terminal event is sent, so once a client
has seen the end of the stream its ledger row is final; ``finally`` blocks settle every
other ending.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from keyfob.gateway.estimate import estimate_async
from keyfob.gateway.headers import STREAM_COST_COMMENT
from keyfob.gateway.meter import Meter
from keyfob.gateway.streams import OpenAIPassThrough, Transform, Watcher
from keyfob.gateway.translate.sse import Splitter
from keyfob.money import format_usd
from keyfob.pricing.usage import TokenUsage


class StreamRelay:
    def __init__(
        self,
        meter: Meter,
        upstream: aiohttp.ClientResponse,
        estimate_body: dict[str, Any],
        watcher: Watcher,
        transform: Transform,
    ) -> None:
        self.meter = meter
        self.upstream = upstream
        self.estimate_body = estimate_body
        self.watcher = watcher
        self.transform = transform
        self.splitter = Splitter()
        #: Keyfob's own count, when the upstream reported no usage.
        self.counted: TokenUsage | None = None
        self._iter: AsyncGenerator[bytes, None] | None = None

    async def complete(self) -> int:
        """The stream ended normally: settle from the upstream's usage or our own count."""
        status = self.upstream.status
        usage = self.watcher.usage
        if usage is not None:
            s = self.meter.from_usage(
                usage, status="settled", source="upstream", upstream_status=status
            )
        else:
            counted = await estimate_async(self.estimate_body, "".join(self.watcher.text))
            self.counted = counted
            s = self.meter.from_usage(
                counted, status="estimated", source="estimated", upstream_status=status
            )
        await self.meter.settle(s)
        return s.cost_micro_usd

    async def abort(self, reason: str) -> None:
        """The stream did not end normally: settle with what is known."""
        if self.meter.settled:
            return
        usage = self.watcher.usage
        if usage is not None and self.watcher.usage_final:
            s = self.meter.from_usage(
                usage, status="settled", source="upstream", upstream_status=self.upstream.status
            )
        else:
            s = self.meter.charged(reason, self.upstream.status)
        await self.meter.settle(s)

    async def _terminal(self, out: list[bytes]) -> bytes:
        """Settle, then the last events with the cost comment before the terminal one."""
        cost = await self.complete()
        comment = f": {STREAM_COST_COMMENT}={format_usd(cost)}\n".encode("ascii")
        if not out:
            return comment
        return b"".join(out[:-1]) + self._counted_usage_chunk() + comment + out[-1]

    def _counted_usage_chunk(self) -> bytes:
        """The usage chunk the client asked for (``stream_options.include_usage``) when the
        upstream sent none (llama.cpp's server, say): Keyfob's own count, so the SDK's
        ``chunk.usage`` is there as with any OpenAI stream."""
        t = self.transform
        if self.counted is None or not isinstance(t, OpenAIPassThrough) or not t.client_wants_usage:
            return b""
        w = self.watcher
        u = self.counted
        chunk: dict[str, Any] = {
            "id": getattr(w, "chunk_id", None) or "chatcmpl-keyfob",
            "object": "chat.completion.chunk",
            "created": getattr(w, "created", None) or int(time.time()),
            "model": getattr(w, "model", None) or "",
            "choices": [],
            "usage": {
                "prompt_tokens": u.input_tokens,
                "completion_tokens": u.output_tokens,
                "total_tokens": u.input_tokens + u.output_tokens,
            },
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def events(self) -> AsyncGenerator[bytes, None]:
        watcher, transform = self.watcher, self.transform
        try:
            try:
                async for chunk in self.upstream.content.iter_any():
                    pending: list[bytes] = []
                    for event in self.splitter.feed(chunk):
                        watcher.observe(event)
                        out = transform.feed(event)
                        if transform.done and not self.meter.settled:
                            pending.append(await self._terminal(out))
                        else:
                            pending.extend(out)
                    if pending:
                        yield b"".join(pending)
            except (TimeoutError, aiohttp.ClientError) as exc:
                await self.abort(f"upstream stream broke off ({type(exc).__name__})")
                yield transform.error_event("the upstream stream broke off")
                return
            if self.splitter.buf and not transform.done:
                watcher.observe(self.splitter.buf)
                yield b"".join(transform.feed(self.splitter.buf))
            if not self.meter.settled:
                if watcher.finish_seen and watcher.error is None:
                    out = transform.finish()
                    if out:
                        yield await self._terminal(out)
                    else:
                        await self.complete()
                else:
                    await self.abort(watcher.error or "upstream stream ended early")
                    if not transform.done:
                        yield transform.error_event("the upstream stream ended early")
        finally:
            self.upstream.close()
            await self.abort("client disconnected before the stream ended")

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iter is None:
            self._iter = self.events()
        return self._iter

    async def aclose(self) -> None:
        if self._iter is not None:
            await self._iter.aclose()
        self.upstream.close()
        await self.abort("the response was never sent")


class MeteredStream(StreamingResponse):
    """A StreamingResponse that settles its call however the response ends."""

    def __init__(self, relay: StreamRelay, headers: dict[str, str]) -> None:
        super().__init__(relay, headers=headers, media_type="text/event-stream")
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.aclose()
