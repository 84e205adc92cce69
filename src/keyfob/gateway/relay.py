"""Streaming relay: upstream SSE bytes go to the client as they arrive, metered on the side.

Events are cut at their blank-line boundary and passed on unmodified, with two exceptions:
the usage-only chunk Keyfob asked for (``stream_options.include_usage``) is dropped when
the client did not ask for it, and an SSE comment ``: keyfob-cost-usd=...`` precedes
``data: [DONE]`` (SDK parsers ignore comments) so a client can read the exact cost.
Settlement happens before ``[DONE]`` is sent, so once a client has seen the end of the
stream its ledger row is final; the ``finally`` blocks settle every other ending.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from keyfob.gateway.estimate import estimate_async, tool_call_text
from keyfob.gateway.headers import STREAM_COST_COMMENT
from keyfob.gateway.meter import Meter
from keyfob.money import format_usd
from keyfob.pricing.usage import TokenUsage

EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class StreamRelay:
    def __init__(
        self,
        meter: Meter,
        upstream: aiohttp.ClientResponse,
        body: dict[str, Any],
        *,
        client_wants_usage: bool,
    ) -> None:
        self.meter = meter
        self.upstream = upstream
        self.body = body
        self.client_wants_usage = client_wants_usage
        self.usage: TokenUsage | None = None
        self.text: list[str] = []
        self.finish_seen = False
        self.upstream_error: str | None = None
        self._buf = b""
        self._iter: AsyncGenerator[bytes, None] | None = None

    def split(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events: list[bytes] = []
        start = 0
        for m in EVENT_END.finditer(self._buf):
            events.append(self._buf[start : m.end()])
            start = m.end()
        self._buf = self._buf[start:]
        return events

    def inspect(self, event: bytes) -> str:
        """Classify one event ("done", "usage_only", "data") and note usage and text."""
        lines = event.decode("utf-8", errors="replace").splitlines()
        data = "\n".join(ln[5:].removeprefix(" ") for ln in lines if ln.startswith("data:"))
        if not data:
            return "data"
        if data.strip() == "[DONE]":
            return "done"
        try:
            obj = json.loads(data)
        except ValueError:
            return "data"
        if not isinstance(obj, dict):
            return "data"
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = TokenUsage.from_openai(usage) or self.usage
        if obj.get("error") is not None:
            self.upstream_error = "upstream reported an error mid-stream"
        choices = obj.get("choices")
        if isinstance(choices, list):
            for c in choices:
                if not isinstance(c, dict):
                    continue
                if c.get("finish_reason"):
                    self.finish_seen = True
                delta = c.get("delta")
                if isinstance(delta, dict):
                    for key in ("content", "refusal", "reasoning_content"):
                        if isinstance(delta.get(key), str):
                            self.text.append(delta[key])
                    self.text.extend(tool_call_text(delta.get("tool_calls")))
            if not choices and isinstance(usage, dict):
                return "usage_only"
        return "data"

    async def complete(self) -> int:
        """The stream ended normally: settle from the upstream's usage or our own count."""
        status = self.upstream.status
        if self.usage is not None:
            s = self.meter.from_usage(
                self.usage, status="settled", source="upstream", upstream_status=status
            )
        else:
            counted = await estimate_async(self.body, "".join(self.text))
            s = self.meter.from_usage(
                counted, status="estimated", source="estimated", upstream_status=status
            )
        await self.meter.settle(s)
        return s.cost_micro_usd

    async def abort(self, reason: str) -> None:
        """The stream did not end normally: settle with what is known."""
        if self.meter.settled:
            return
        if self.usage is not None:
            s = self.meter.from_usage(
                self.usage,
                status="settled",
                source="upstream",
                upstream_status=self.upstream.status,
            )
        else:
            s = self.meter.charged(reason, self.upstream.status)
        await self.meter.settle(s)

    async def events(self) -> AsyncGenerator[bytes, None]:
        try:
            try:
                async for chunk in self.upstream.content.iter_any():
                    pending: list[bytes] = []
                    for event in self.split(chunk):
                        kind = self.inspect(event)
                        if kind == "done":
                            if pending:
                                yield b"".join(pending)
                                pending = []
                            cost = await self.complete()
                            comment = f": {STREAM_COST_COMMENT}={format_usd(cost)}\n"
                            yield comment.encode("ascii") + event
                        elif kind == "usage_only" and not self.client_wants_usage:
                            continue
                        else:
                            pending.append(event)
                    if pending:
                        yield b"".join(pending)
            except (TimeoutError, aiohttp.ClientError) as exc:
                await self.abort(f"upstream stream broke off ({type(exc).__name__})")
                err = {
                    "error": {
                        "message": "the upstream stream broke off",
                        "type": "api_error",
                        "param": None,
                        "code": "upstream_error",
                    }
                }
                yield f"data: {json.dumps(err)}\n\n".encode()
                return
            if self._buf:
                yield self._buf
            if not self.meter.settled:
                if self.finish_seen and self.upstream_error is None:
                    await self.complete()
                else:
                    await self.abort(self.upstream_error or "upstream stream ended early")
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
