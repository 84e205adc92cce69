"""Anthropic format -> OpenAI format: Messages requests, answers and stream events.

Used both ways round: an Anthropic-format call served by an OpenAI-compatible model
sends ``request()`` upstream; an OpenAI-format call served by an Anthropic model gets
its answer through ``response()`` or, streamed, through ``MessagesToChatStream``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from keyfob.gateway.translate import Untranslatable
from keyfob.gateway.translate.sse import DONE, data_event, parse_json
from keyfob.pricing.usage import TokenUsage

#: Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# --- requests -------------------------------------------------------------------------


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Untranslatable("an image block's 'source' must be an object")
    media_type, data, url = source.get("media_type", "image/png"), source.get("data"), None
    if source.get("type") == "base64":
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise Untranslatable("a base64 image source needs string media_type and data")
        url = f"data:{media_type};base64,{data}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise Untranslatable("this image source has no OpenAI form")
    return {"type": "image_url", "image_url": {"url": url}}


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return "" if content is None else json.dumps(content)


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(
            b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    raise Untranslatable("'system' must be a string or an array of text blocks")


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn -> OpenAI messages: tool results first, then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "tool_result":
            text = _result_text(block.get("content"))
            if block.get("is_error"):
                text = f"[tool error] {text}"
            out.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text}
            )
        else:
            raise Untranslatable(f"{where}: block of type {kind!r} has no OpenAI form")
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name")),
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # another model's reasoning cannot be replayed
        else:
            raise Untranslatable(f"{where}: block of type {kind!r} has no OpenAI form")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool(t: Any) -> dict[str, Any]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or "input_schema" not in t:
        raise Untranslatable("only custom tools (name + input_schema) can be translated")
    fn: dict[str, Any] = {"name": t["name"], "parameters": t["input_schema"]}
    if isinstance(t.get("description"), str):
        fn["description"] = t["description"]
    return {"type": "function", "function": fn}


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise Untranslatable("tool_choice has no OpenAI form")


def request(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic Messages body as an OpenAI chat-completions body."""
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _system(body["system"])})
    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if m["role"] == "user":
            messages.extend(_user(m.get("content"), where))
        elif m["role"] == "assistant":
            messages.append(_assistant(m.get("content"), where))
        else:
            raise Untranslatable(f"{where}.role must be user or assistant")
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            out["tool_choice"] = _tool_choice(choice)
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        out["user"] = meta["user_id"]
    return out


# --- answers --------------------------------------------------------------------------


def usage_of(usage: Any) -> TokenUsage:
    parsed = TokenUsage.from_anthropic(usage) if isinstance(usage, dict) else None
    return parsed or TokenUsage(0, 0)


def response(data: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic message as an OpenAI chat completion."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name")),
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(data.get("id") or uuid.uuid4().hex),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(str(data.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage_of(data.get("usage")).to_openai(),
    }


# --- streams --------------------------------------------------------------------------


class MessagesToChatStream:
    """Anthropic Messages events in, OpenAI chat chunks out.

    The usage-only chunk is sent when the client asked for it
    (``stream_options.include_usage``), as OpenAI does.
    """

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.raw_usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self.finish_reason: str | None = None
        self.done = False
        self.error: str | None = None

    @property
    def usage(self) -> TokenUsage | None:
        return TokenUsage.from_anthropic(self.raw_usage) if self.raw_usage else None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return data_event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    def feed(self, event: bytes) -> list[bytes]:
        if self.done:
            return []
        name, obj, _raw = parse_json(event)
        if obj is None:
            return []
        kind = obj.get("type") or name
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.raw_usage.update(usage)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tools)
                self.tools[int(obj.get("index", 0))] = index
                call = {
                    "index": index,
                    "id": str(block.get("id")),
                    "type": "function",
                    "function": {"name": str(block.get("name")), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [self._chunk({"content": str(delta.get("text", ""))})]
            if dtype == "thinking_delta":
                return [self._chunk({"reasoning_content": str(delta.get("thinking", ""))})]
            if dtype == "input_json_delta":
                index = self.tools.get(int(obj.get("index", 0)), 0)
                call = {"index": index, "function": {"arguments": str(delta.get("partial_json"))}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.raw_usage.update({k: v for k, v in usage.items() if v is not None})
            reason = (obj.get("delta") or {}).get("stop_reason")
            self.finish_reason = FINISH_REASONS.get(str(reason), "stop")
            return [self._chunk({}, self.finish_reason)]
        if kind == "message_stop":
            return self.finish()
        if kind == "error":
            err = obj.get("error") or {}
            self.error = "upstream reported an error mid-stream"
            self.done = True
            return [
                data_event(
                    {
                        "error": {
                            "message": str(err.get("message") or "upstream error"),
                            "type": str(err.get("type") or "api_error"),
                            "param": None,
                            "code": "upstream_error",
                        }
                    }
                )
            ]
        return []  # ping, signature deltas, unknown future events

    def finish(self) -> list[bytes]:
        if self.done:
            return []
        self.done = True
        out: list[bytes] = []
        if self.finish_reason is None:
            out.append(self._chunk({}, "stop"))
        if self.include_usage:
            usage = self.usage or TokenUsage(0, 0)
            out.append(
                data_event(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage.to_openai(),
                    }
                )
            )
        out.append(DONE)
        return out
