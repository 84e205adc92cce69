"""Shape checks on a chat-completions body, so bad input is a 400, never a 500.

Only what Keyfob itself relies on is checked (model, messages, stream, output limits,
``n``); every other field is the upstream's to judge and is passed through.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from keyfob import limits
from keyfob.gateway.errors import invalid

MAX_N = 8


def loads(raw: bytes | str) -> Any:
    """``json.loads`` with orjson's parser in front.

    Why: orjson parses a typical request or answer several times faster than the
    standard library, and every gateway call parses two. It is stricter in a few corners
    (integers beyond 64 bits, NaN/Infinity literals, lone surrogates), so whatever it
    refuses goes through ``json.loads``, which accepts or refuses exactly as before."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A client's request body: strict JSON (RFC 8259), so ``NaN`` and ``Infinity`` are
    refused as the providers' own APIs refuse them, at most ``MAX_JSON_DEPTH`` deep and
    valid Unicode (``limits.parse_json``), so every body Keyfob forwards can be
    re-encoded by orjson exactly (``providers.http.dumps``)."""
    try:
        body = limits.parse_json(raw)
    except limits.InvalidJson as exc:
        raise invalid(str(exc), code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object", code="invalid_json")
    return body


def _positive_int(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise invalid(f"{key!r} must be a positive integer", param=key)


def chat_body(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid(
            "'model' is required and must be a non-empty string",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_value",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of message objects", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}] must be an object", param=f"messages[{i}]")
        if not isinstance(m.get("role"), str):
            raise invalid(f"messages[{i}].role must be a string", param=f"messages[{i}].role")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("'stream' must be a boolean", param="stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise invalid("'stream_options' must be an object", param="stream_options")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N):
        raise invalid(f"'n' must be an integer from 1 to {MAX_N}", param="n")
    for key in ("tools", "functions"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise invalid(f"{key!r} must be an array", param=key)
