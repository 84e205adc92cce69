"""Streaming relay: upstream SSE events go to the client as they arrive, metered on the side.

Events are cut at their blank-line boundary; a watcher reads the upstream's usage and a
transform passes them on (same format: unchanged bytes, bar the usage chunk Keyfob asked
for and the client did not) or translates them (``streams.py``). An SSE comment
``: keyfob-cost-usd=...`` precedes the terminal event (``data: [DONE]``, Anthropic's
``message_stop``, ``response.completed``; SDK parsers ignore comments) so a client can read
the exact cost. Settlement happens before the terminal event is sent, so once a client
has seen the end of the stream its ledger row is final; ``StreamRelay.run``'s ``finally``
settles every other ending.

Defence in depth for the output bound: an ``OutputGuard`` counts the generated output,
and a stream that passes the bound Keyfob reserved (and sent upstream) is cut: the
upstream connection is closed, the call settled at what was counted (at least its
reservation), and the client's stream ends as its surface ends a length-limited answer
(``finish_reason: "length"``, ``stop_reason: "max_tokens"``, an incomplete response).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from keyfob.gateway.estimate import estimate_async
from keyfob.gateway.headers import STREAM_COST_COMMENT
from keyfob.gateway.meter import Meter
from keyfob.gateway.output import OutputGuard
from keyfob.gateway.streams import (
    AnthropicWatcher,
    OpenAIPassThrough,
    OpenAIWatcher,
    Transform,
    Translating,
    Watcher,
    anthropic_length_ending,
    openai_length_ending,
)
from keyfob.gateway.translate.responses import ESTIMATED_FLAG
from keyfob.gateway.translate.sse import Splitter
from keyfob.gateway.upstream_errors import mask_bytes
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
        *,
        max_output_tokens: int = 0,
    ) -> None:
        self.meter = meter
        self.upstream = upstream
        self.estimate_body = estimate_body
        self.watcher = watcher
        self.transform = transform
        self.splitter = Splitter()
        #: Keyfob's own count, when the upstream reported no usage.
        self.counted: TokenUsage | None = None
        #: Set by the listener when the client hung up (its cancellation is then ours).
        self.hung_up = False
        #: The provider key, masked in every event sent should the upstream echo it
        #: (events are whole when sent, so a key never straddles two sends).
        self.secret: bytes | None = None
        #: Registers the stream for the revocation watch (``state.LiveStreams``) and
        #: returns its unregistering; set by the gateway.
        self.guard: Callable[[StreamRelay], Callable[[], None]] | None = None
        #: Why the stream was cut (its token or grant was revoked), once it was.
        self.cut_reason: str | None = None
        self._main: asyncio.Task[Any] | None = None
        #: Counts the output against its bound (None: no output bound, nothing to cut).
        self.output_guard = OutputGuard(max_output_tokens) if max_output_tokens > 0 else None
        #: Set once the stream was cut at its output bound.
        self.was_cut = False

    def cut(self, reason: str) -> None:
        """Stop relaying now (from the revocation watch): the upstream is closed, the
        call settled, and the client gets the surface's error event and the end."""
        main = self._main
        if self.cut_reason is None and main is not None and not main.done():
            self.cut_reason = reason
            main.cancel()

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
        self.meter.settle_soon(s)  # the stream's end does not wait for the write
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
        if self.counted is not None and isinstance(self.transform, Translating):
            out = self.transform.with_counted_usage(out, self.counted)
        return b"".join(out[:-1]) + self._counted_usage_chunk() + comment + out[-1]

    async def _cut_at_bound(self) -> list[bytes]:
        """The output passed its bound: close the upstream, settle at what was counted,
        and end the client's stream as its surface ends a length-limited answer."""
        self.was_cut = True
        self.upstream.close()
        guard = self.output_guard
        assert guard is not None
        counted = TokenUsage(self.meter.input_bound, guard.tokens)
        s = self.meter.cut(counted, self.upstream.status)
        await self.meter.settle(s)
        w, transform = self.watcher, self.transform
        if isinstance(w, AnthropicWatcher):
            ending = anthropic_length_ending(w, guard.tokens)
        else:
            assert isinstance(w, OpenAIWatcher)
            n = self.estimate_body.get("n")
            n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
            ending = openai_length_ending(w, n, counted)
        out: list[bytes] = []
        for event in ending:
            w.observe(event)
            out += transform.feed(event)
        if not transform.done:
            out += transform.finish()
        comment = f": {STREAM_COST_COMMENT}={format_usd(s.cost_micro_usd)}\n".encode("ascii")
        return [*out[:-1], comment, out[-1]] if out else [comment]

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
                ESTIMATED_FLAG: True,
            },
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def run(
        self, send: Send, receive: Receive, raw_headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Send the whole response, and settle the call however it ends.

        Why not Starlette's ``StreamingResponse``: on an ASGI 2.3 server (uvicorn) it runs
        an anyio task group per response to hear the client hang up, some 20 us a stream.
        A hang-up can only be acted on while this task waits, so the listener task starts
        the first time the relay has to wait for the upstream (a stream that arrives whole
        needs none) and, as the task group did, cancels this task when the client is gone.
        """
        main = asyncio.current_task()
        assert main is not None
        cancelling = main.cancelling()
        listener: asyncio.Task[None] | None = None
        reason = "the response was never sent"
        self._main = main
        unguard = self.guard(self) if self.guard is not None else None
        started = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
            started = True
            reason = "client disconnected before the stream ended"
            content = self.upstream.content
            read_nowait, readany, at_eof = content.read_nowait, content.readany, content.at_eof
            split, observe = self.splitter.feed, self.watcher.observe
            transform, meter = self.transform, self.meter
            tfeed = transform.feed
            guard = self.output_guard
            text = self._text
            tail: list[bytes] = []
            try:
                while not self.was_cut:
                    chunk = read_nowait()
                    if not chunk:
                        if content.is_eof():
                            break
                        if listener is None:
                            listener = asyncio.ensure_future(self._listen(receive, main))
                        chunk = await readany()
                        if not chunk:
                            break
                    pending: list[bytes] = []
                    for event in split(chunk):
                        observe(event)
                        if guard is not None and guard.passed(len(event), text):
                            pending += await self._cut_at_bound()
                            break
                        out = tfeed(event)
                        if transform.done and not meter.settled:
                            pending.append(await self._terminal(out))
                        else:
                            pending += out
                    if pending:
                        if self.was_cut or at_eof():  # the last bytes go out with the end
                            tail = pending
                            break
                        await send(
                            {
                                "type": "http.response.body",
                                "body": mask_bytes(b"".join(pending), self.secret),
                                "more_body": True,
                            }
                        )
            except (TimeoutError, aiohttp.ClientError) as exc:
                await self.abort(f"upstream stream broke off ({type(exc).__name__})")
                tail = [transform.error_event("the upstream stream broke off")]
            else:
                if not self.was_cut:
                    tail += await self._ending()
            if listener is not None:
                listener.cancel()  # what it would hear now is the response's own end
                listener = None
            body = mask_bytes(b"".join(tail), self.secret)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except asyncio.CancelledError:
            ours = self.hung_up or self.cut_reason is not None
            if not ours or main.uncancel() > cancelling:
                raise  # not (only) the listener's or the watch's doing
            if self.cut_reason is not None and not self.hung_up:
                reason = self.cut_reason
                if listener is not None:
                    listener.cancel()
                    listener = None
                self.upstream.close()
                if started:
                    end = self.transform.error_event(self.cut_reason)
                    await send({"type": "http.response.body", "body": end, "more_body": False})
        finally:
            self._main = None
            if unguard is not None:
                unguard()
            if listener is not None:
                listener.cancel()
            self.upstream.close()
            await self.abort(reason)

    def _text(self) -> list[str]:
        return self.watcher.text

    async def _listen(self, receive: Receive, main: asyncio.Task[Any]) -> None:
        """Wait for the client to hang up, then stop the relay (``main``)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.hung_up = True
        main.cancel()

    async def _ending(self) -> list[bytes]:
        """After the upstream's last byte: an unterminated last event, then settlement and
        the terminal event (or the error event of a stream that ended early)."""
        watcher, transform = self.watcher, self.transform
        out: list[bytes] = []
        partial = self.splitter.buf if not transform.done else b""
        error_before = watcher.error
        if partial:
            watcher.observe(partial)
        if partial and (
            self.meter.settled
            or (watcher.finish_seen and watcher.error is None)
            or watcher.error is not error_before  # a whole error event, unterminated
        ):
            out += transform.feed(partial)
            if watcher.error is not error_before:
                out.append(b"\n\n")  # ends it, so what follows is an event of its own
        if not self.meter.settled:
            if watcher.finish_seen and watcher.error is None:
                last = transform.finish()
                if last:
                    out.append(await self._terminal(last))
                else:
                    await self.complete()
            else:
                # Ended early: a cut-off last event is dropped (as when the upstream
                # breaks mid-event), so the error event is one the client can read.
                await self.abort(watcher.error or "upstream stream ended early")
                if not transform.done:
                    out.append(transform.error_event("the upstream stream ended early"))
        return out


class MeteredStream(Response):
    """The streamed response; ``StreamRelay.run`` sends it and settles its call however
    it ends."""

    media_type = "text/event-stream"

    def __init__(self, relay: StreamRelay, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        # What ``init_headers`` makes of them (no Content-Length for a stream), for less.
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if all(k != b"content-type" for k, _ in raw):
            raw.append(_CONTENT_TYPE)
        self.raw_headers = raw
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.relay.run(send, receive, self.raw_headers)


_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
