"""``StreamRelay.run`` and ``MeteredStream`` (gateway/relay.py) attacked as an ASGI app.

No server and no network: a fake client (``receive``/``send`` as uvicorn hands them over),
the upstream's body in a real ``aiohttp.StreamReader`` (so ``read_nowait``, ``readany``,
``at_eof`` and ``is_eof`` behave exactly as aiohttp's, errors included), and the real
``Meter`` over an allowance that records what it writes.

The invariant is "no lost usage": every call that reached the upstream ends with exactly
one settlement, whatever the client or the upstream does; the upstream response is always
closed; and neither a task nor a cancellation request outlives the call (but the
settlement's write, which the stream's end does not wait for: ``metering.pending``,
awaited here as a reader would). Why attack it
here: the relay sends its own ASGI messages and runs its own disconnect listener, so
every ending (hang-up, cancellation, a broken upstream) is its code, not Starlette's.

Each test is driven by events and queues, so it is deterministic; only the slow-stream
test sleeps (a few milliseconds, on purpose). Settlement runs both ways ``Meter.settle``
can: inline (SQLite's fast path) and in its own task (a busy database).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from starlette.types import Message

from keyfob.allowance.service import Reservation
from keyfob.allowance.windows import Window
from keyfob.context import Keyfob
from keyfob.gateway.estimate import count, input_tokens
from keyfob.gateway.headers import STREAM_COST_COMMENT
from keyfob.gateway.meter import Meter
from keyfob.gateway.relay import MeteredStream, StreamRelay
from keyfob.gateway.streams import OpenAIPassThrough, OpenAIWatcher
from keyfob.metering import pending
from keyfob.metering.types import Settlement
from keyfob.money import format_usd
from keyfob.pricing.prices import Price

#: The call's worst case, charged whole when its usage is unknown.
RESERVED = 1_000_000
#: $1 / $2 per million tokens: one micro-USD per input token, two per output token.
PRICE = Price("override", Decimal(1), Decimal(2))
LEFT = 4_242
ESTIMATE_BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hello"}]}
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
USAGE_COST = 10 * 1 + 5 * 2
SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}


# --- the upstream's stream ---------------------------------------------------------------


def event(obj: dict[str, Any], eol: str = "\n") -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}{eol}{eol}".encode()


def delta(text: str, finish: str | None = None, eol: str = "\n") -> bytes:
    return event(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        },
        eol,
    )


def usage_chunk(eol: str = "\n") -> bytes:
    return event(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": USAGE,
        },
        eol,
    )


def done(eol: str = "\n") -> bytes:
    return f"data: [DONE]{eol}{eol}".encode()


TEXT = "Hello world"


def deltas(eol: str = "\n") -> bytes:
    """The generated text (``TEXT``) in two chunks, then the chunk that finishes it."""
    return delta("Hello", eol=eol) + delta(" world", eol=eol) + delta("", "stop", eol=eol)


#: The first two chunks: a stream cut here has neither finished nor reported usage.
STARTED = delta("Hello") + delta(" world")
WITH_USAGE = deltas() + usage_chunk() + done()
NO_USAGE = deltas() + done()


def with_cost(stream: bytes, cost: int, eol: str = "\n") -> bytes:
    """What the client should get: the upstream's bytes, with the cost comment just
    before the terminal event (relay.py's module docstring)."""
    terminal = done(eol)
    assert stream.endswith(terminal)
    comment = f": {STREAM_COST_COMMENT}={format_usd(cost)}\n".encode()
    return stream[: -len(terminal)] + comment + terminal


# --- fakes -------------------------------------------------------------------------------


class _Connection:
    """What ``aiohttp.StreamReader`` asks of its connection: liveness and flow control."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class FakeUpstream:
    """What the relay uses of ``aiohttp.ClientResponse``: ``status``, ``content`` (a real
    ``StreamReader`` the test feeds) and ``close()``, counted."""

    def __init__(self) -> None:
        self.status = 200
        self.content = aiohttp.StreamReader(
            cast(Any, _Connection()), 2**16, loop=asyncio.get_running_loop()
        )
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class Ledger:
    """The allowance service as ``Meter`` sees it, recording every settlement written.

    Inline, ``settle_now`` writes it (SQLite's fast path); otherwise ``settle_now``
    declines and ``settle`` writes it in the Meter's own task, after a real suspension
    (a database round trip) and once ``release`` is set, so a test can hold it there."""

    def __init__(self, *, inline: bool) -> None:
        self.inline = inline
        self.written: list[Settlement] = []
        self.release = asyncio.Event()
        self.release.set()
        self.writing = asyncio.Event()

    def settle_now(self, reservation: Reservation, s: Settlement) -> int | None:
        if not self.inline:
            return None
        self.written.append(s)
        return LEFT

    async def settle(self, reservation: Reservation, s: Settlement) -> int:
        self.writing.set()
        await asyncio.sleep(0)
        await self.release.wait()
        self.written.append(s)
        return LEFT


class Client:
    """The server's side of one ASGI call: records what the app sends; ``receive``
    answers what the test puts in ``inbox`` (a hang-up), and says when it is first
    called (the relay's disconnect listener started). ``hold_sends`` makes body sends
    wait for ``unblock`` (a client that does not read: back-pressure); ``fail_on`` makes
    one type of message fail to send."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.listening = asyncio.Event()
        self._changed = asyncio.Event()
        self.hold_sends = False
        self.held = asyncio.Event()
        self.unblock = asyncio.Event()
        #: A message type whose send raises, as a server's may once the peer is gone.
        self.fail_on: str | None = None

    async def receive(self) -> Message:
        self.listening.set()
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        assert not self.ended, f"sent after the end of the response: {message}"
        if self.fail_on is not None and message["type"] == self.fail_on:
            raise OSError("the connection is gone")
        if message["type"] == "http.response.body" and self.hold_sends:
            self.held.set()
            await self.unblock.wait()
        self.messages.append(message)
        self._changed.set()

    def hang_up(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    @property
    def bodies(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.bodies)

    @property
    def ended(self) -> bool:
        return any(not m.get("more_body", False) for m in self.bodies)

    async def got(self, data: bytes) -> None:
        """Wait until the client has received ``data`` (a prefix of the body)."""
        while not self.body.startswith(data):
            self._changed.clear()
            await self._changed.wait()

    def check_well_formed(self) -> None:
        """A response start (200, an event stream), then body messages; nothing after
        the one that ends it."""
        first, *rest = self.messages
        assert first["type"] == "http.response.start" and first["status"] == 200
        assert dict(first["headers"])[b"content-type"].startswith(b"text/event-stream")
        assert all(m["type"] == "http.response.body" for m in rest)
        ends = [i for i, m in enumerate(rest) if not m.get("more_body", False)]
        assert ends in ([], [len(rest) - 1])


class Call:
    """One streamed call as ``metered_call`` builds it (an OpenAI pass-through), with
    the fakes around it."""

    def __init__(self, *, inline: bool, wants_usage: bool = True) -> None:
        self.ledger = Ledger(inline=inline)
        self.upstream = FakeUpstream()
        self.client = Client()
        window = Window("month:2026-11", 0.0, 4_000_000_000.0)
        reservation = Reservation("entry-1", RESERVED, window, left_micro_usd=RESERVED)
        kf = cast(Keyfob, SimpleNamespace(allowance=self.ledger))
        self.meter = Meter(kf, reservation, PRICE)
        watcher = OpenAIWatcher()
        self.relay = StreamRelay(
            self.meter,
            cast(aiohttp.ClientResponse, self.upstream),
            ESTIMATE_BODY,
            watcher,
            OpenAIPassThrough(watcher, client_wants_usage=wants_usage),
        )
        self.app = MeteredStream(self.relay, {"X-Keyfob-Entry-Id": "entry-1"})
        #: Whether the settlement was decided (started) when the client was sent the
        #: terminal event, each time (it is written after: ``metering.pending``).
        self.settled_at_done: list[bool] = []

    async def _send(self, message: Message) -> None:
        if b"data: [DONE]" in message.get("body", b""):
            self.settled_at_done.append(self.meter.settled)
        await self.client.send(message)

    async def run(self) -> int:
        """The ASGI call as the server makes it; returns the cancellation requests its
        task is left with (a swallowed hang-up must leave none)."""
        await self.app(SCOPE, self.client.receive, self._send)
        await pending.settled()  # as a reader would: the write the answer did not wait for
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    def start(self) -> asyncio.Task[int]:
        return asyncio.create_task(self.run())

    def feed(self, data: bytes, *, end: bool = False) -> None:
        if data:
            self.upstream.content.feed_data(data)
        if end:
            self.upstream.content.feed_eof()

    async def waiting_mid_stream(self, sent: bytes) -> None:
        """Until the client has ``sent`` and the relay waits for the upstream (its
        listener is up)."""
        await self.client.got(sent)
        await self.client.listening.wait()

    def settled_once(self) -> Settlement:
        """The call's one settlement, with the upstream closed exactly once."""
        assert len(self.ledger.written) == 1, self.ledger.written
        assert self.meter.settled
        assert self.upstream.closed == 1
        return self.ledger.written[0]


@pytest.fixture(params=["inline", "task"])
def inline(request: pytest.FixtureRequest) -> bool:
    """Both ways ``Meter.settle`` writes: synchronously, or in a task behind a shield."""
    return bool(request.param == "inline")


@pytest.fixture(scope="module", autouse=True)
def _warm_encoder() -> Iterator[None]:
    """Load the token encoder once, so an estimated settlement costs no test a second."""
    count("warm")
    yield


async def no_tasks_left() -> None:
    """Nothing the call started is still running after it (one loop turn lets a task
    cancelled on the way out finish)."""
    await asyncio.sleep(0)
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert left == [], left


def assert_charged(s: Settlement, error: str) -> None:
    assert s.status == "charged_reservation"
    assert s.usage_source == "reservation"
    assert s.cost_micro_usd == RESERVED
    assert s.needs_reconciliation
    assert s.upstream_status == 200
    assert s.error == error


def assert_upstream_usage(s: Settlement) -> None:
    assert s.status == "settled" and s.usage_source == "upstream"
    assert (s.input_tokens, s.output_tokens) == (10, 5)
    assert s.cost_micro_usd == USAGE_COST
    assert not s.needs_reconciliation and s.error is None
    assert s.upstream_status == 200


# --- 1. the whole stream at once ---------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
async def test_whole_stream_is_relayed_in_one_message_and_settled_from_its_usage(
    inline: bool, eol: str
) -> None:
    """A stream that is all there when the relay starts goes out whole, with the end of
    the response in the same message, and needs no disconnect listener; its usage chunk
    settles it. CRLF events take the watcher's general path and must come out the same."""
    call = Call(inline=inline)
    stream = deltas(eol) + usage_chunk(eol) + done(eol)
    call.feed(stream, end=True)

    assert await call.run() == 0

    call.client.check_well_formed()
    assert call.client.body == with_cost(stream, USAGE_COST, eol)
    assert len(call.client.bodies) == 1 and call.client.ended
    assert not call.client.listening.is_set()
    assert call.settled_at_done == [True]  # its cost was final before the client saw it
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


async def test_usage_chunk_nobody_asked_for_is_dropped_but_still_settles(inline: bool) -> None:
    """The usage chunk Keyfob asked for on the client's behalf is not relayed, yet its
    usage is what the call is charged."""
    call = Call(inline=inline, wants_usage=False)
    call.feed(WITH_USAGE, end=True)

    await call.run()

    assert call.client.body == with_cost(NO_USAGE, USAGE_COST)
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


def test_metered_stream_headers_are_lower_case_with_an_event_stream_type() -> None:
    """``MeteredStream`` encodes its headers itself (no ``init_headers``): lower-case
    names, a content type added only when the caller gave none."""
    relay = cast(StreamRelay, object())
    plain = MeteredStream(relay, {"X-Keyfob-Entry-Id": "e1"})
    assert plain.raw_headers == [
        (b"x-keyfob-entry-id", b"e1"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
    ]
    typed = MeteredStream(relay, {"Content-Type": "text/event-stream"})
    assert typed.raw_headers == [(b"content-type", b"text/event-stream")]


# --- 2. a slow stream --------------------------------------------------------------------


@pytest.mark.parametrize(("piece", "pause"), [(1, 0.0), (7, 0.0), (40, 0.002)])
async def test_slow_stream_reaches_the_client_byte_for_byte(
    inline: bool, piece: int, pause: float
) -> None:
    """Chunks cut anywhere (mid-line, mid-event, between CR and LF) and arriving over
    time: the relay waits for each, and the client's bytes are the upstream's, plus the
    cost comment."""
    call = Call(inline=inline)
    task = call.start()
    for i in range(0, len(WITH_USAGE), piece):
        call.feed(WITH_USAGE[i : i + piece])
        await asyncio.sleep(pause)
    call.feed(b"", end=True)

    assert await task == 0

    call.client.check_well_formed()
    assert call.client.ended
    assert call.client.body == with_cost(WITH_USAGE, USAGE_COST)
    assert len(call.client.bodies) > 2  # relayed as it came, not buffered to the end
    assert call.client.listening.is_set()
    assert call.settled_at_done == [True]
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


# --- 3. the client hangs up --------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "settles_from_usage"),
    [(b"", False), (STARTED, False), (deltas() + usage_chunk(), True)],
    ids=["before-any-byte", "mid-text", "after-usage"],
)
async def test_hang_up_while_waiting_stops_the_relay_and_settles_once(
    inline: bool, before: bytes, settles_from_usage: bool
) -> None:
    """A hang-up heard while the relay waits for the upstream: the relay stops, the ASGI
    call returns without raising and leaves its task no cancellation request, the
    upstream is closed. The settlement is the upstream's usage once its final count has
    come (``StreamRelay.abort``), else the reservation, charged and flagged."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(before)
    await call.waiting_mid_stream(before)

    call.client.hang_up()

    assert await task == 0
    call.client.check_well_formed()
    assert not call.client.ended  # nobody left to tell
    s = call.settled_once()
    if settles_from_usage:
        assert_upstream_usage(s)
    else:
        assert_charged(s, "client disconnected before the stream ended")
    await no_tasks_left()


async def test_listener_ignores_other_messages_until_the_hang_up(inline: bool) -> None:
    """What ``receive`` may hand over before a hang-up (an empty last request chunk) does
    not stop the relay; the hang-up after it does."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)

    call.client.inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not task.done() and not call.meter.settled
    call.client.hang_up()

    assert await task == 0
    assert_charged(call.settled_once(), "client disconnected before the stream ended")
    await no_tasks_left()


async def test_hang_up_racing_the_last_bytes_settles_from_the_usage(inline: bool) -> None:
    """The last bytes (terminal event, end of body) and the hang-up arrive together: the
    relay either finishes the response (settling inline, it never waits again) or is
    stopped while it waits for its settlement; either way the call settles once, from
    the upstream's usage, and a response the client got the end of is whole."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(deltas())
    await call.waiting_mid_stream(deltas())

    call.feed(usage_chunk() + done(), end=True)  # the relay wakes first ...
    call.client.hang_up()  # ... then the listener

    assert await task == 0
    if call.client.ended:
        assert call.client.body == with_cost(WITH_USAGE, USAGE_COST)
    await call.meter.settle(call.meter.charged("a second settlement", 200))  # waits for the first
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


@pytest.mark.parametrize(
    ("fail_on", "error"),
    [
        ("http.response.start", "the response was never sent"),
        ("http.response.body", "client disconnected before the stream ended"),
    ],
)
async def test_send_that_raises_still_settles_once(inline: bool, fail_on: str, error: str) -> None:
    """The server's ``send`` raises (a server or middleware that reports a gone peer that
    way): the error reaches the server, and the call, which reached the upstream, is
    charged its reservation once."""
    call = Call(inline=inline)
    task = call.start()
    call.client.fail_on = fail_on
    call.feed(STARTED)

    with pytest.raises(OSError, match="the connection is gone"):
        await task
    assert_charged(call.settled_once(), error)
    await no_tasks_left()


async def test_hang_up_while_a_send_is_blocked_stops_the_relay(inline: bool) -> None:
    """A client that stops reading (the send waits on back-pressure) and then hangs up:
    the listener cancels the blocked send, and the call settles once."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(delta("Hello"))
    await call.waiting_mid_stream(delta("Hello"))
    call.client.hold_sends = True
    call.feed(delta(" world"))
    await call.client.held.wait()

    call.client.hang_up()

    assert await task == 0
    assert_charged(call.settled_once(), "client disconnected before the stream ended")
    await no_tasks_left()


async def test_hang_up_while_the_settlement_is_written_loses_nothing() -> None:
    """The stream ended and its settlement is being written (a slow database) when the
    client hangs up: the listener's cancellation stops the wait, not the write, and the
    ledger ends with the upstream's usage, once."""
    call = Call(inline=False)
    task = call.start()
    await call.client.listening.wait()
    call.ledger.release.clear()
    call.feed(WITH_USAGE)  # the terminal event arrives; the end of the body has not
    await call.ledger.writing.wait()

    call.client.hang_up()
    assert await task == 0

    call.ledger.release.set()
    await call.meter.settle(call.meter.charged("a second settlement", 200))  # waits for the first
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


async def test_hang_up_while_the_usage_is_counted_settles_once(inline: bool) -> None:
    """The stream ended without usage and Keyfob is counting its text (off the loop)
    when the hang-up lands: the call still settles exactly once, either from the count
    or, if the count was cut short, from the reservation (charged and flagged)."""
    call = Call(inline=inline)
    task = call.start()
    await call.client.listening.wait()

    call.feed(NO_USAGE)  # the relay wakes first and starts counting ...
    call.client.hang_up()  # ... then the listener hears the hang-up

    assert await task == 0
    s = call.settled_once()
    if s.status == "charged_reservation":
        assert_charged(s, "client disconnected before the stream ended")
    else:
        assert (s.status, s.usage_source) == ("estimated", "estimated")
    await no_tasks_left()


# --- 4. cancellation from outside --------------------------------------------------------


@pytest.mark.parametrize("where", ["waiting-for-upstream", "blocked-in-send"])
async def test_cancellation_from_outside_propagates_and_still_settles(
    inline: bool, where: str
) -> None:
    """A cancellation that is not the listener's (server shutdown, a timeout) reaches the
    canceller, and the call is settled once on the way out, its upstream closed."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)
    if where == "blocked-in-send":
        call.client.hold_sends = True
        call.feed(delta("!"))
        await call.client.held.wait()

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert_charged(call.settled_once(), "client disconnected before the stream ended")
    await no_tasks_left()


@pytest.mark.parametrize("first", ["hang-up", "cancel"])
async def test_cancellation_from_outside_is_not_swallowed_with_a_hang_up(
    inline: bool, first: str
) -> None:
    """A hang-up and an outside cancellation together: the relay may swallow only its
    listener's cancellation (``uncancel``), so the outside one still propagates."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)

    if first == "hang-up":
        call.client.hang_up()
        task.cancel()
    else:
        task.cancel()
        call.client.hang_up()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert_charged(call.settled_once(), "client disconnected before the stream ended")
    await no_tasks_left()


async def test_second_cancellation_during_the_settlement_does_not_lose_it() -> None:
    """Cancelled, then cancelled again while the ``finally`` waits for the settlement (a
    slow database): the write is shielded, so it lands, once."""
    call = Call(inline=False)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)
    call.ledger.release.clear()

    task.cancel()
    await call.ledger.writing.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.ledger.written == []  # still being written
    call.ledger.release.set()
    await call.meter.settle(call.meter.charged("a second settlement", 200))  # waits for the first
    assert_charged(call.settled_once(), "client disconnected before the stream ended")
    await no_tasks_left()


# --- 5. the upstream breaks off ----------------------------------------------------------


def broken(exc: BaseException) -> str:
    return f"upstream stream broke off ({type(exc).__name__})"


UPSTREAM_ERRORS = [
    aiohttp.ClientPayloadError("Response payload is not completed"),
    TimeoutError(),
    aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
]


@pytest.mark.parametrize("exc", UPSTREAM_ERRORS, ids=lambda e: type(e).__name__)
async def test_upstream_error_mid_stream_charges_the_reservation(
    inline: bool, exc: BaseException
) -> None:
    """The upstream's read fails mid-stream: the reservation is charged and flagged, the
    client gets an error event and the end of the response, the upstream is closed, and
    the ASGI call does not raise."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)

    call.upstream.content.set_exception(exc)

    assert await task == 0
    call.client.check_well_formed()
    assert call.client.ended
    assert call.client.body.startswith(STARTED)
    error = call.client.body[len(STARTED) :]
    assert json.loads(error.removeprefix(b"data: "))["error"]["message"] == (
        "the upstream stream broke off"
    )
    assert_charged(call.settled_once(), broken(exc))
    await no_tasks_left()


async def test_upstream_error_before_the_first_read(inline: bool) -> None:
    """The error is there before the relay reads anything (``read_nowait`` raises): the
    same ending, with no listener needed."""
    exc = aiohttp.ClientPayloadError("Response payload is not completed")
    call = Call(inline=inline)
    call.feed(STARTED)
    call.upstream.content.set_exception(exc)

    assert await call.run() == 0

    call.client.check_well_formed()
    assert call.client.ended and not call.client.listening.is_set()
    assert_charged(call.settled_once(), broken(exc))
    await no_tasks_left()


async def test_upstream_error_after_the_final_usage_settles_from_it(inline: bool) -> None:
    """The upstream's final count had come when the read failed: that usage is what is
    known, so it settles the call rather than the reservation."""
    call = Call(inline=inline)
    task = call.start()
    sent = deltas() + usage_chunk()
    call.feed(sent)
    await call.waiting_mid_stream(sent)

    call.upstream.content.set_exception(aiohttp.ClientPayloadError("cut"))

    assert await task == 0
    assert call.client.ended
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


async def test_upstream_error_after_the_terminal_event_keeps_its_settlement(
    inline: bool,
) -> None:
    """The terminal event went out (settled first) and the connection then breaks (no
    last chunk of the chunked body): the settlement stands, none is added."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(WITH_USAGE)
    await call.waiting_mid_stream(with_cost(WITH_USAGE, USAGE_COST))

    call.upstream.content.set_exception(aiohttp.ClientPayloadError("cut"))

    assert await task == 0
    assert call.client.ended
    assert call.client.body.startswith(with_cost(WITH_USAGE, USAGE_COST))
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


# --- 6. no usage from the upstream -------------------------------------------------------


@pytest.mark.parametrize("wants_usage", [True, False])
async def test_stream_without_usage_is_settled_from_keyfobs_count(
    inline: bool, wants_usage: bool
) -> None:
    """No usage chunk: Keyfob counts the prompt and the watcher's text, settles the call
    as estimated, and (when the client asked for usage) adds a usage chunk with that
    count before the cost comment."""
    call = Call(inline=inline, wants_usage=wants_usage)
    call.feed(NO_USAGE, end=True)

    assert await call.run() == 0

    s = call.settled_once()
    prompt, completion = input_tokens(ESTIMATE_BODY), count(TEXT)
    assert (s.status, s.usage_source) == ("estimated", "estimated")
    assert (s.input_tokens, s.output_tokens) == (prompt, completion)
    assert s.cost_micro_usd == prompt + 2 * completion
    assert s.upstream_status == 200 and not s.needs_reconciliation

    body = call.client.body
    added = b""
    if wants_usage:
        added = event(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "gpt-4o-mini",
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "keyfob_estimated": True,  # Keyfob's count, not the upstream's
                },
            }
        )
    assert body == with_cost(deltas() + added + done(), s.cost_micro_usd)
    await no_tasks_left()


async def test_stream_that_finishes_without_done_or_usage_is_estimated(inline: bool) -> None:
    """The finishing chunk came but no ``[DONE]`` and no usage (some servers): a normal
    ending, counted by Keyfob; the bytes go out unchanged."""
    call = Call(inline=inline)
    call.feed(deltas(), end=True)

    await call.run()

    assert call.client.body == deltas() and call.client.ended
    s = call.settled_once()
    assert (s.status, s.usage_source, s.output_tokens) == ("estimated", "estimated", count(TEXT))
    await no_tasks_left()


async def test_stream_that_ends_early_charges_the_reservation(inline: bool) -> None:
    """The upstream's body ends cleanly before the text finished: not a normal ending, so
    the reservation is charged and the client told with an error event."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(STARTED)
    await call.waiting_mid_stream(STARTED)

    call.feed(b"", end=True)

    assert await task == 0
    assert call.client.ended and call.client.body.startswith(STARTED)
    assert b"the upstream stream ended early" in call.client.body[len(STARTED) :]
    assert_charged(call.settled_once(), "upstream stream ended early")
    await no_tasks_left()


# --- 7. an unterminated last event -------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "from_usage"),
    [
        (deltas() + usage_chunk() + b"data: [DONE]", True),
        (deltas() + usage_chunk().rstrip(b"\n"), True),
        (deltas() + b"data: [DONE]", False),
    ],
    ids=["done", "usage", "done-without-usage"],
)
async def test_unterminated_last_event_is_relayed_as_is_and_settled_once(
    inline: bool, stream: bytes, from_usage: bool
) -> None:
    """The upstream's last event lacks its blank line: it goes out as it came (the
    relay's ``_ending``), and the call settles once, from the upstream's usage when an
    event had it, else from Keyfob's count."""
    call = Call(inline=inline)
    call.feed(stream, end=True)

    assert await call.run() == 0

    call.client.check_well_formed()
    assert call.client.ended
    assert call.client.body == stream
    s = call.settled_once()
    if from_usage:
        assert_upstream_usage(s)
    else:
        assert (s.status, s.usage_source) == ("estimated", "estimated")
    await no_tasks_left()


async def test_unterminated_last_event_after_waiting_is_relayed_as_is(inline: bool) -> None:
    """The same, when the unterminated event arrives after the relay waited (listener
    up) and the upstream then ends."""
    call = Call(inline=inline)
    task = call.start()
    call.feed(deltas())
    await call.waiting_mid_stream(deltas())

    call.feed(usage_chunk() + b"data: [DONE]", end=True)

    assert await task == 0
    assert call.client.body == deltas() + usage_chunk() + b"data: [DONE]"
    assert call.client.ended
    assert_upstream_usage(call.settled_once())
    await no_tasks_left()


async def test_error_event_after_a_cut_event_is_an_event_of_its_own(inline: bool) -> None:
    """The upstream's body ends cleanly in the middle of an event (no finish): the call is
    charged once, and the client should still get the error event as an event of its
    own (on its own line), whatever the cut-off bytes before it."""
    call = Call(inline=inline)
    cut = b'data: {"id":"chatcmpl-1","choi'
    call.feed(STARTED + cut, end=True)

    await call.run()

    assert_charged(call.settled_once(), "upstream stream ended early")
    lines = call.client.body[len(STARTED) :].split(b"\n")
    assert any(line.startswith(b'data: {"error"') for line in lines), lines


async def test_an_unterminated_upstream_error_event_is_relayed_whole(inline: bool) -> None:
    """The upstream's last event is a whole error event without its blank line: the client
    gets it as the upstream sent it, ended, and Keyfob's own error event after it."""
    call = Call(inline=inline)
    upstream_error = b'data: {"error":{"message":"overloaded","type":"server_error"}}'
    call.feed(STARTED + upstream_error, end=True)

    await call.run()

    assert call.settled_once().status == "charged_reservation"
    tail = call.client.body[len(STARTED) :]
    assert tail.startswith(upstream_error + b"\n\n"), tail
    events = [e for e in tail.split(b"\n\n") if e.strip()]
    assert len(events) == 2 and all(e.startswith(b'data: {"error"') for e in events), events
