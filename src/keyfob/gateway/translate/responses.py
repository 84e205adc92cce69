"""The Responses API (``POST /v1/responses``) implemented over chat completions.

Keyfob stores no conversation state, so ``previous_response_id`` and built-in tools
(web search, file search...) are refused with a 400; everything expressible as a chat
completion (text, images, function tools and their outputs, JSON schema output) is
translated, which lets every provider serve the Responses API, Anthropic ones included.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from keyfob.gateway.translate import Untranslatable
from keyfob.gateway.translate.sse import named_event, parse_json
from keyfob.pricing.usage import TokenUsage

UNSUPPORTED = ("previous_response_id", "conversation", "prompt", "background")


def _parts(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content must be a string or an array")
    parts: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(p.get("text", ""))})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(p.get("refusal", ""))})
        else:
            raise Untranslatable(f"{where}: content of type {kind!r} is not supported")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        out.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise Untranslatable(f"{where}.role {role!r} is not supported")
            out.append({"role": role, "content": _parts(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id")),
                "type": "function",
                "function": {"name": str(item.get("name")), "arguments": item.get("arguments")},
            }
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise Untranslatable(f"{where}: items of type {kind!r} are not supported")
    return out


def request(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A Responses body as a chat-completions body."""
    for key in UNSUPPORTED:
        if body.get(key) is not None:
            raise Untranslatable(f"{key!r} needs server-side state Keyfob does not keep")
    out: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = []
    for t in body.get("tools") or []:
        if not isinstance(t, dict) or t.get("type") != "function":
            raise Untranslatable("only function tools are supported on /v1/responses")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        tools.append({"type": "function", "function": fn})
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice in ("auto", "none", "required"):
            out["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    return out


def output_bound_body(body: dict[str, Any]) -> dict[str, Any]:
    return {"max_tokens": body.get("max_output_tokens")}


# --- answers --------------------------------------------------------------------------


def _message_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call_id: str, name: str, arguments: str, item_id: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def envelope(
    body: dict[str, Any],
    *,
    resp_id: str,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: TokenUsage | None,
    created: int,
    incomplete: bool = False,
) -> dict[str, Any]:
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "temperature": body.get("temperature"),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
        "usage": usage.to_responses() if usage is not None else None,
    }


def response(data: dict[str, Any], body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A chat completion as a Responses API ``response`` object."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        output.append(_message_item(msg["content"], f"msg_{uuid.uuid4().hex[:24]}"))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        output.append(
            _call_item(
                str(tc.get("id")),
                str(fn.get("name")),
                str(fn.get("arguments") or ""),
                f"fc_{uuid.uuid4().hex[:24]}",
            )
        )
    incomplete = choice.get("finish_reason") == "length"
    return envelope(
        body,
        resp_id=f"resp_{uuid.uuid4().hex[:24]}",
        model=model,
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=TokenUsage.from_openai(data.get("usage") or {}),
        created=int(time.time()),
        incomplete=incomplete,
    )


#: Set on a ``usage`` object that is Keyfob's own count rather than the upstream's report.
ESTIMATED_FLAG = "keyfob_estimated"


# --- streams --------------------------------------------------------------------------


class ChatToResponsesStream:
    """OpenAI chat chunks in, Responses API events out (``response.*``)."""

    def __init__(self, body: dict[str, Any], *, model: str) -> None:
        self.body = body
        self.model = model
        self.id = f"resp_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.seq = 0
        self.started = False
        self.text: list[str] = []
        self.msg_id: str | None = None
        self.msg_index = -1
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool index -> item under way
        self.output: list[dict[str, Any]] = []
        self.usage: TokenUsage | None = None
        self.finish_reason: str | None = None
        self.done = False
        self.error: str | None = None
        #: (event type, sequence number, status) of the terminal event, once sent.
        self.terminal: tuple[str, int, str] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return named_event(kind, payload)

    def _envelope(self, status: str, usage: TokenUsage | None = None) -> dict[str, Any]:
        return envelope(
            self.body,
            resp_id=self.id,
            model=self.model,
            status=status,
            output=[o for o in self.output if o],
            usage=usage,
            created=self.created,
            incomplete=status == "incomplete",
        )

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        env = self._envelope("in_progress")
        return [
            self._event("response.created", response=env),
            self._event("response.in_progress", response=env),
        ]

    def feed(self, event: bytes) -> list[bytes]:
        if self.done:
            return []
        _name, obj, raw = parse_json(event)
        if raw.strip() == "[DONE]":
            return self.finish()
        if obj is None:
            return []
        out = self._start()
        if obj.get("error") is not None:
            err = obj["error"]
            self.error = "upstream reported an error mid-stream"
            self.done = True
            message = err.get("message") if isinstance(err, dict) else str(err)
            return [
                *out,
                self._event(
                    "error", code="upstream_error", message=str(message or "error"), param=None
                ),
            ]
        if isinstance(obj.get("usage"), dict):
            self.usage = TokenUsage.from_openai(obj["usage"]) or self.usage
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text(delta["content"])
            for tc in delta.get("tool_calls") or []:
                if isinstance(tc, dict):
                    out += self._call(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _text(self, piece: str) -> list[bytes]:
        out: list[bytes] = []
        if self.msg_id is None:
            self.msg_id = f"msg_{uuid.uuid4().hex[:24]}"
            self.msg_index = len(self.output)
            self.output.append({})
            item = _message_item("", self.msg_id, "in_progress")
            item["content"] = []
            part = {"type": "output_text", "text": "", "annotations": []}
            out += [
                self._event("response.output_item.added", output_index=self.msg_index, item=item),
                self._event(
                    "response.content_part.added",
                    item_id=self.msg_id,
                    output_index=self.msg_index,
                    content_index=0,
                    part=part,
                ),
            ]
        self.text.append(piece)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self.msg_id,
                output_index=self.msg_index,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        )
        return out

    def _call(self, tc: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        call = self.calls.get(index)
        if call is None:
            call = {
                "item_id": f"fc_{uuid.uuid4().hex[:24]}",
                "call_id": str(tc.get("id") or f"call_{uuid.uuid4().hex[:20]}"),
                "name": str(fn.get("name") or ""),
                "args": [],
                "output_index": len(self.output),
            }
            self.calls[index] = call
            self.output.append({})
            item = _call_item(call["call_id"], call["name"], "", call["item_id"])
            item["status"] = "in_progress"
            out.append(
                self._event(
                    "response.output_item.added", output_index=call["output_index"], item=item
                )
            )
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            call["args"].append(args)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call["item_id"],
                    output_index=call["output_index"],
                    delta=args,
                )
            )
        return out

    def finish(self) -> list[bytes]:
        if self.done:
            return []
        self.done = True
        out = self._start()
        if self.msg_id is not None:
            text = "".join(self.text)
            part = {"type": "output_text", "text": text, "annotations": []}
            item = _message_item(text, self.msg_id)
            self.output[self.msg_index] = item
            out += [
                self._event(
                    "response.output_text.done",
                    item_id=self.msg_id,
                    output_index=self.msg_index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=self.msg_id,
                    output_index=self.msg_index,
                    content_index=0,
                    part=part,
                ),
                self._event("response.output_item.done", output_index=self.msg_index, item=item),
            ]
        for call in self.calls.values():
            args = "".join(call["args"])
            item = _call_item(call["call_id"], call["name"], args, call["item_id"])
            self.output[call["output_index"]] = item
            out += [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call["item_id"],
                    output_index=call["output_index"],
                    arguments=args,
                ),
                self._event(
                    "response.output_item.done", output_index=call["output_index"], item=item
                ),
            ]
        incomplete = self.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        kind = "response.incomplete" if incomplete else "response.completed"
        self.terminal = (kind, self.seq, status)
        out.append(self._event(kind, response=self._envelope(status, self.usage)))
        return out

    def with_counted_usage(self, events: list[bytes], usage: TokenUsage) -> list[bytes]:
        """``events`` with the terminal event carrying ``usage``, Keyfob's own count,
        when the upstream reported none (fakellm, llama.cpp's server...): clients that log
        usage from ``response.completed`` (the ``llm`` CLI) would record nothing. Flagged
        ``keyfob_estimated`` so an app can tell it from the provider's own report."""
        if self.usage is not None or self.terminal is None or not events:
            return events
        kind, seq, status = self.terminal
        env = self._envelope(status, usage)
        env["usage"][ESTIMATED_FLAG] = True
        payload = {"type": kind, "sequence_number": seq, "response": env}
        return [*events[:-1], named_event(kind, payload)]
