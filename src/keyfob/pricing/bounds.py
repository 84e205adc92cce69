"""Upper bounds on a call's tokens without a tokenizer, for worst-case reservations.

Byte-level BPE tokenizers (GPT, Llama, Gemma, Claude) emit at least one byte per token,
so the UTF-8 length of every string the model will read bounds its input tokens. Chat
templates add a few special tokens per message; images get a configured bound each.
The bound is loose (about 4x for English) and that is the point: it can never be below
what the upstream reports, so a reservation always covers its settlement.
"""

from __future__ import annotations

import json
from typing import Any

TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 16


def _text_bytes(value: Any, image_bound: int) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return sum(_part_bytes(p, image_bound) for p in value)
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _part_bytes(part: Any, image_bound: int) -> int:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind in ("image_url", "image", "input_image"):
            return image_bound
        if kind == "text":
            return _text_bytes(part.get("text"), image_bound)
    return _text_bytes(part, image_bound)


def chat_input_bound(body: dict[str, Any], *, image_token_bound: int) -> int:
    """Bound the input tokens of an OpenAI chat-completions body."""
    total = TOKENS_PER_REQUEST
    for message in body.get("messages") or []:
        total += TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            for key, value in message.items():
                if key == "content" or key != "role":
                    total += _text_bytes(value, image_token_bound)
    for key in ("tools", "functions", "response_format", "tool_choice"):
        if body.get(key) is not None:
            total += _text_bytes(body[key], image_token_bound)
    return total


def chat_output_bound(body: dict[str, Any], *, default_max_output_tokens: int) -> int:
    """Bound the output tokens: max_completion_tokens or max_tokens, times ``n``."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = default_max_output_tokens
    n = body.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        n = 1
    return limit * n


def messages_input_bound(body: dict[str, Any], *, image_token_bound: int) -> int:
    """Bound the input tokens of an Anthropic Messages body (system, messages, tools)."""
    total = TOKENS_PER_REQUEST + _text_bytes(body.get("system"), image_token_bound)
    for message in body.get("messages") or []:
        total += TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            content = message.get("content")
            parts = content if isinstance(content, list) else [content]
            total += sum(_block_bytes(p, image_token_bound) for p in parts)
    for key in ("tools", "tool_choice"):
        if body.get(key) is not None:
            total += _text_bytes(body[key], image_token_bound)
    return total


def _block_bytes(block: Any, image_bound: int) -> int:
    if isinstance(block, dict):
        kind = block.get("type")
        if kind == "image":
            return image_bound
        if kind == "document":  # a PDF: its base64 bytes, at least an image's bound
            return max(image_bound, _text_bytes(block, image_bound))
        if kind == "text":
            return _text_bytes(block.get("text"), image_bound)
        if kind == "tool_result":
            content = block.get("content")
            parts = content if isinstance(content, list) else [content]
            return 16 + sum(_block_bytes(p, image_bound) for p in parts)
    return _text_bytes(block, image_bound)


def embeddings_input_bound(body: dict[str, Any]) -> int:
    """Bound an embeddings input: UTF-8 bytes of strings, or the count of token ids."""
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += len(item.encode("utf-8")) + 2
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total
