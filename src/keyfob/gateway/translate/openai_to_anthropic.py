"""OpenAI format -> Anthropic format: chat requests, chat answers, chat stream chunks.

Used both ways round: an OpenAI-format call served by an Anthropic model sends
``request()`` upstream; an Anthropic-format call served by an OpenAI-compatible model
gets its answer through ``response()`` or, streamed, through ``ChatToMessagesStream``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from keyfob.gateway.translate import Untranslatable
from keyfob.gateway.translate.sse import named_event, parse_json
from keyfob.pricing.usage import TokenUsage

#: OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --- requests -------------------------------------------------------------------------


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content must be a string or an array of parts")
    out: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise Untranslatable(f"{where}: image_url.url must be a string")
            out.append(_image_block(url))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append({"type": "text", "text": part["refusal"]})
        else:
            raise Untranslatable(f"{where}: content part of type {kind!r} has no Anthropic form")
    return out


def _text_of(content: Any) -> str:
    return "\n".join(b["text"] for b in _blocks(content, "system") if b["type"] == "text")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except (ValueError, RecursionError):
        raise Untranslatable("a tool call's arguments are not valid JSON") from None
    return value if isinstance(value, dict) else {"value": value}


def _tool(t: Any) -> dict[str, Any]:
    fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise Untranslatable("only function tools can be served by an Anthropic model")
    out: dict[str, Any] = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None if parallel is not False else {"type": "auto"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise Untranslatable("tool_choice has no Anthropic form")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive messages of one role are merged (Anthropic alternates user/assistant)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def request(body: dict[str, Any], *, model: str, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat-completions body as an Anthropic Messages body."""
    if (body.get("n") or 1) != 1:
        raise Untranslatable("'n' above 1 cannot be served by an Anthropic model")
    # Searches are quoted and charged per use; dropped in translation, the app would pay
    # for a search that never ran (and get an answer without one).
    if body.get("web_search_options") is not None:
        raise Untranslatable(
            "web_search_options (an OpenAI search model's option) has no Anthropic form; "
            "send the Messages API's web_search tool with max_uses instead"
        )
    if isinstance(body.get("plugins"), list) and body["plugins"]:
        raise Untranslatable("plugins (OpenRouter's) cannot be served by an Anthropic model")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body["messages"]):
        role, where = m.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content")))
        elif role == "user":
            _append(messages, "user", _blocks(m.get("content"), where))
        elif role == "assistant":
            blocks = _blocks(m.get("content"), where)
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict):
                    raise Untranslatable(f"{where}.tool_calls entries need a function")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": str(tc.get("id") or f"toolu_{uuid.uuid4().hex[:20]}"),
                        "name": str(fn.get("name")),
                        "input": _arguments(fn.get("arguments")),
                    }
                )
            _append(messages, "assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(m.get("tool_call_id")),
                "content": _blocks(m.get("content"), where) or "",
            }
            _append(messages, "user", [result])
        else:
            raise Untranslatable(f"{where}.role {role!r} has no Anthropic form")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema")
        rule = "Answer with one JSON object and nothing else."
        if schema is not None:
            rule += " It must match this JSON schema: " + json.dumps(schema)
        system.append(rule)
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    for key in ("temperature", "top_p", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


# --- answers --------------------------------------------------------------------------


def response(data: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message (the first choice)."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        try:
            args = _arguments(fn.get("arguments"))
        except Untranslatable:
            args = {"arguments": fn.get("arguments")}
        content.append(
            {
                "type": "tool_use",
                "id": str(tc.get("id") or f"toolu_{uuid.uuid4().hex[:20]}"),
                "name": str(fn.get("name")),
                "input": args,
            }
        )
    usage = TokenUsage.from_openai(data.get("usage") or {}) or TokenUsage(0, 0)
    return {
        "id": "msg_" + str(data.get("id") or uuid.uuid4().hex),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": usage.to_anthropic(),
    }


# --- streams --------------------------------------------------------------------------


class ChatToMessagesStream:
    """OpenAI chat chunks in, Anthropic Messages events out.

    Anthropic sends the input token count first (``message_start``) and OpenAI last (its
    usage chunk), so ``message_start`` carries zeros and the final ``message_delta``
    carries the whole usage, which the Anthropic SDKs take as the final count.
    """

    def __init__(self, *, model: str, count: Callable[[str], int] | None = None) -> None:
        self.model = model
        #: Counts generated text when the upstream reports no usage (llama.cpp streams).
        self.count = count
        self.pieces: list[str] = []
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.started = False
        self.block: int = -1  # index of the open content block, -1 when none
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool index -> block index
        self.next_block = 0
        self.stop_reason: str | None = None
        self.usage: TokenUsage | None = None
        self.done = False
        self.error: str | None = None

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [
            named_event("message_start", {"type": "message_start", "message": message}),
        ]

    def _close_block(self) -> list[bytes]:
        if self.block < 0:
            return []
        out = [
            named_event("content_block_stop", {"type": "content_block_stop", "index": self.block})
        ]
        self.block, self.block_kind = -1, None
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self.block, self.block_kind = self.next_block, kind
        self.next_block += 1
        out.append(
            named_event(
                "content_block_start",
                {"type": "content_block_start", "index": self.block, "content_block": block},
            )
        )
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return named_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.block, "delta": delta},
        )

    def feed(self, event: bytes) -> list[bytes]:
        """One upstream SSE event -> the Anthropic events it becomes."""
        if self.done:
            return []
        _name, obj, raw = parse_json(event)
        if raw.strip() == "[DONE]":
            return self.finish()
        if obj is None:
            return []
        if obj.get("error") is not None:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            self.error = "upstream reported an error mid-stream"
            self.done = True
            return [*self._start(), error_event(str(message or "upstream error"))]
        out = self._start()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = TokenUsage.from_openai(usage) or self.usage
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
                self.pieces.append(text)
            for tc in delta.get("tool_calls") or []:
                out += self._tool_delta(tc)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def _tool_delta(self, tc: Any) -> list[bytes]:
        if not isinstance(tc, dict):
            return []
        out: list[bytes] = []
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        if index not in self.tool_blocks:
            out += self._open(
                "tool",
                {
                    "type": "tool_use",
                    "id": str(tc.get("id") or f"toolu_{uuid.uuid4().hex[:20]}"),
                    "name": str(fn.get("name") or ""),
                    "input": {},
                },
            )
            self.tool_blocks[index] = self.block
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            if self.block != self.tool_blocks[index]:
                return out  # interleaved tools: Anthropic streams one block at a time
            out.append(self._delta({"type": "input_json_delta", "partial_json": args}))
            self.pieces.append(args)
        return out

    def finish(self) -> list[bytes]:
        """Close the message (on ``[DONE]`` or when the upstream ends after finishing)."""
        if self.done:
            return []
        self.done = True
        out = [*self._start(), *self._close_block()]
        known = self.usage
        if known is None and self.count is not None:
            known = TokenUsage(0, self.count("".join(self.pieces)))  # an estimate
        usage = (known or TokenUsage(0, 0)).to_anthropic()
        out.append(
            named_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        out.append(named_event("message_stop", {"type": "message_stop"}))
        return out


def error_event(message: str, type_: str = "api_error") -> bytes:
    return named_event("error", {"type": "error", "error": {"type": type_, "message": message}})
