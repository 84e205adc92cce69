"""What the relay does with each upstream SSE event: watch it, and pass or translate it.

A *watcher* reads the upstream's own wire format for usage, generated text (for our own
count when no usage comes) and a normal ending. A *transform* turns each upstream event
into what the client's surface expects: unchanged bytes for same-format calls, or a
translation (``gateway/translate/``). A transform sets ``done`` when it has produced the
stream's terminal event, which the relay holds back until the call is settled.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import orjson

from keyfob.gateway.estimate import tool_call_text
from keyfob.gateway.translate.openai_to_anthropic import error_event as anthropic_error
from keyfob.gateway.translate.sse import data_event, named_event, parse_json
from keyfob.pricing.usage import TokenUsage


class Watcher(Protocol):
    finish_seen: bool
    error: str | None

    @property
    def text(self) -> list[str]:
        """The generated text so far, for Keyfob's own count."""

    @property
    def usage(self) -> TokenUsage | None:
        """The upstream's reported usage so far."""

    @property
    def usage_final(self) -> bool:
        """Whether ``usage`` is the upstream's final count (not a partial one)."""

    def observe(self, event: bytes) -> None: ...


class Transform(Protocol):
    @property
    def done(self) -> bool:
        """Whether the stream's terminal event has been produced."""

    def feed(self, event: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...

    def error_event(self, message: str) -> bytes: ...


class OpenAIWatcher:
    """Chat-completion chunks: classifies each (``kind``) so a pass-through needs no
    second parse.

    Each chunk is parsed (orjson on its bytes) but only checked for what ends or settles
    the stream. Its text matters only if the stream ends without the upstream's usage
    (Keyfob then counts it), so the event is held (``_held``) and ``text`` reads the held
    events when first asked for. Why: walking every chunk's deltas was most of the cost
    Keyfob added per streamed event, and an upstream that reports usage never needs it.
    (Screening the bytes for the keys instead costs more than orjson's parse.)
    """

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self._text: list[str] = []
        #: Events whose text is still to be read, in order, and their size.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self.finish_seen = False
        self.error: str | None = None
        self.kind = "data"
        #: The stream's id, model and creation time, for a usage chunk Keyfob may add.
        self.chunk_id: str | None = None
        self.model: str | None = None
        self.created: int | None = None

    @property
    def usage_final(self) -> bool:
        return self.usage is not None  # OpenAI reports usage once, at the end

    @property
    def text(self) -> list[str]:
        """The generated text so far."""
        if self._held:
            self._read_held()
        return self._text

    def observe(self, event: bytes) -> None:
        self._held.append(event)
        self._held_bytes += len(event)
        if self._held_bytes > HELD_MAX_BYTES:
            self._read_held()
        # The common chunk, ``data: {...}`` on one line (as in ``_single_data_line``):
        # parsed here, and whether it says more than its text settled with the fewest
        # look-ups; anything else takes the general path.
        if (
            self.chunk_id is not None
            and event.startswith(b"data: {")
            and event.find(b"\n") == len(event) - 2
            and event.endswith(b"\n\n")
        ):
            try:
                obj = _loads(event[6:-2])
            except orjson.JSONDecodeError:
                pass
            else:  # a dict: the data starts with "{"
                if type(obj.get("usage")) is not dict and obj.get("error") is None:
                    choices = obj.get("choices")
                    if type(choices) is not list:
                        self.kind = "data"
                        return
                    for c in choices:
                        if type(c) is dict and c.get("finish_reason"):
                            break
                    else:
                        self.kind = "data"
                        return
                self.kind = self._classify(obj)
                return
        self.kind = self._observe(event)

    def _read_held(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        for event in held:
            obj = _parse(event)
            if isinstance(obj, dict):
                _chunk_text(obj, self._text)

    def _observe(self, event: bytes) -> str:
        obj = _parse(event)
        if obj is _DONE:
            return "done"
        if not isinstance(obj, dict):
            return "data"
        return self._classify(obj)

    def _classify(self, obj: dict[str, Any]) -> str:
        if self.chunk_id is None and isinstance(obj.get("id"), str):
            self.chunk_id = obj["id"]
            self.model = obj.get("model") if isinstance(obj.get("model"), str) else None
            created = obj.get("created")
            self.created = created if isinstance(created, int) else None
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = TokenUsage.from_openai(usage) or self.usage
        if obj.get("error") is not None:
            self.error = "upstream reported an error mid-stream"
        choices = obj.get("choices")
        if isinstance(choices, list):
            for c in choices:
                if isinstance(c, dict) and c.get("finish_reason"):
                    self.finish_seen = True
            if not choices and isinstance(usage, dict):
                return "usage_only"
        return "data"


#: Held events are read (and let go) beyond this size: what a long stream holds stays
#: bounded, and costs what reading the text per event did.
HELD_MAX_BYTES = 256 * 1024


def _chunk_text(obj: dict[str, Any], out: list[str]) -> None:
    """The generated text in a chunk's deltas (content, refusal, reasoning, tool calls)."""
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if not isinstance(c, dict):
                continue
            delta = c.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal", "reasoning_content"):
                    if isinstance(delta.get(key), str):
                        out.append(delta[key])
                out.extend(tool_call_text(delta.get("tool_calls")))


def _parse(event: bytes) -> Any:
    """An event's data as JSON; ``_DONE`` for ``[DONE]``; None without data or valid JSON."""
    obj = _single_data_line(event)
    if obj is None:
        lines = event.decode("utf-8", errors="replace").splitlines()
        data = "\n".join(ln[5:].removeprefix(" ") for ln in lines if ln.startswith("data:"))
        if not data:
            return None
        if data.strip() == "[DONE]":
            return _DONE
        try:
            return json.loads(data)
        except ValueError:
            return None
    return obj


_DONE = object()
_loads = orjson.loads


def _single_data_line(event: bytes) -> Any:
    """The parsed JSON of an event that is exactly ``data: <json>`` plus its blank line
    (what every OpenAI-style upstream sends), ``_DONE`` for ``data: [DONE]``; None for
    anything else, which then takes the general path.

    Why: decoding, splitting and re-joining lines and the standard library's parser cost
    several times what orjson on the raw bytes does, on every chunk of every stream."""
    if not event.startswith(b"data: ") or event.count(b"\n") != 2 or not event.endswith(b"\n\n"):
        return None
    data = event[6:-2]
    if data == b"[DONE]":
        return _DONE
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # the general path decides (it is more lenient)


class AnthropicWatcher:
    """Messages events: usage from ``message_start`` merged with ``message_delta``'s."""

    def __init__(self) -> None:
        self.raw_usage: dict[str, Any] = {}
        self.text: list[str] = []
        self.finish_seen = False
        self.error: str | None = None
        self.kind = "data"
        self.usage_final = False  # message_start's count is partial until message_delta
        #: The content block started and not yet stopped (a cut stream closes it).
        self.open_block: int | None = None

    @property
    def usage(self) -> TokenUsage | None:
        return TokenUsage.from_anthropic(self.raw_usage) if self.raw_usage else None

    def observe(self, event: bytes) -> None:
        name, obj, _raw = parse_json(event)
        self.kind = "data"
        if obj is None:
            return
        kind = obj.get("type") or name
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.raw_usage.update(usage)
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.raw_usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage_final = True
        elif kind == "content_block_start":
            index = obj.get("index")
            self.open_block = index if isinstance(index, int) else 0
        elif kind == "content_block_stop":
            self.open_block = None
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    self.text.append(delta[key])
        elif kind == "message_stop":
            self.finish_seen = True
            self.kind = "done"
        elif kind == "error":
            self.error = "upstream reported an error mid-stream"


class OpenAIPassThrough:
    """Same-format OpenAI chat: bytes unchanged, minus the usage chunk nobody asked for."""

    def __init__(self, watcher: OpenAIWatcher, *, client_wants_usage: bool) -> None:
        self.watcher = watcher
        self.client_wants_usage = client_wants_usage
        self.done = False

    def feed(self, event: bytes) -> list[bytes]:
        kind = self.watcher.kind
        if kind == "done":
            self.done = True
        elif kind == "usage_only" and not self.client_wants_usage:
            return []
        return [event]

    def finish(self) -> list[bytes]:
        return []

    def error_event(self, message: str) -> bytes:
        return openai_error_event(message)


class AnthropicPassThrough:
    """Same-format Anthropic Messages: bytes unchanged."""

    def __init__(self, watcher: AnthropicWatcher) -> None:
        self.watcher = watcher
        self.done = False

    def feed(self, event: bytes) -> list[bytes]:
        if self.watcher.kind == "done":
            self.done = True
        return [event]

    def finish(self) -> list[bytes]:
        return []

    def error_event(self, message: str) -> bytes:
        return anthropic_error(message)


class Translating:
    """Wraps a translator from ``gateway/translate/`` (or a chain of them)."""

    def __init__(self, *stages: Any, style: str) -> None:
        self.stages = stages
        self.style = style

    @property
    def done(self) -> bool:
        return bool(self.stages[-1].done)

    def feed(self, event: bytes) -> list[bytes]:
        events = [event]
        for stage in self.stages:
            events = [out for ev in events for out in stage.feed(ev)]
        return events

    def finish(self) -> list[bytes]:
        """Each stage's closing events go through the later stages, which then close."""
        pending: list[bytes] = []
        for stage in self.stages:
            pending = [out for ev in pending for out in stage.feed(ev)] + stage.finish()
        return pending

    def with_counted_usage(self, events: list[bytes], usage: TokenUsage) -> list[bytes]:
        """The terminal events with Keyfob's own count, where the last stage reports
        usage there (the Responses API's ``response.completed``)."""
        amend = getattr(self.stages[-1], "with_counted_usage", None)
        return events if amend is None else list(amend(events, usage))

    def error_event(self, message: str) -> bytes:
        if self.style == "anthropic":
            return anthropic_error(message)
        if self.style == "responses":
            return named_event(
                "error",
                {"type": "error", "code": "upstream_error", "message": message, "param": None},
            )
        return openai_error_event(message)


def openai_length_ending(w: OpenAIWatcher, n: int, usage: TokenUsage) -> list[bytes]:
    """The upstream events an OpenAI chat stream ends with when it reaches its length
    limit: each choice finished with ``"length"``, the usage chunk, ``[DONE]``. A cut
    stream is ended with these, through the same transform as the upstream's own."""
    base: dict[str, Any] = {
        "id": w.chunk_id or "chatcmpl-keyfob",
        "object": "chat.completion.chunk",
        "created": w.created or 0,
        "model": w.model or "",
    }
    finish = {
        **base,
        "choices": [{"index": i, "delta": {}, "finish_reason": "length"} for i in range(n)],
    }
    counted = {
        **base,
        "choices": [],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }
    return [data_event(finish), data_event(counted), b"data: [DONE]\n\n"]


def anthropic_length_ending(w: AnthropicWatcher, output_tokens: int) -> list[bytes]:
    """The events a Messages stream ends with at its ``max_tokens``: the open block
    stopped, ``stop_reason: "max_tokens"`` with the output count, ``message_stop``."""
    out: list[bytes] = []
    if w.open_block is not None:
        out.append(
            named_event("content_block_stop", {"type": "content_block_stop", "index": w.open_block})
        )
    out.append(
        named_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    out.append(named_event("message_stop", {"type": "message_stop"}))
    return out


def openai_error_event(message: str) -> bytes:
    return data_event(
        {
            "error": {
                "message": message,
                "type": "api_error",
                "param": None,
                "code": "upstream_error",
            }
        }
    )
