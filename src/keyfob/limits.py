"""Reading request bodies with a hard size limit, and parsing JSON bodies with a depth
and Unicode limit.

Starlette reads bodies whole; a client could send gigabytes. This reads the stream and
stops at the limit, so every endpoint can promise "413, not an out-of-memory". JSON nested
a thousand deep (RecursionError) and lone surrogates (UnicodeEncodeError wherever the text
is encoded again) were 500s: ``parse_json`` refuses both, each endpoint answering the
refusal in its own error format.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body exceeds {limit} bytes")


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(limit)
        except ValueError:
            pass
    if hasattr(request, "_body") or request._stream_consumed:
        return await _read_stream(request, limit)  # Starlette answers these cases
    # The loop of ``Request.stream()`` without its async generator (about 1 us a call,
    # every gateway call reads a body): same messages, same state left on the request
    # (consumed, or disconnected with ClientDisconnect raised).
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            more = message.get("more_body", False)
            if not more:
                request._stream_consumed = True
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(body)
            if not more:
                return b"".join(chunks)
        elif kind == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()


async def _read_stream(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


#: Deepest JSON nesting a client may send. Real bodies stay under ~10 (a tool schema
#: inside a tool inside the request); deeper bodies only make every later walk over the
#: body (bounds, translation, the upstream's own parser) slower or recursive.
MAX_JSON_DEPTH = 64


class InvalidJson(ValueError):
    """A body the JSON reader refuses; the message is fit for the client (no content)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check(value: Any, *, strings: bool) -> None:
    """Depth at most MAX_JSON_DEPTH and, with ``strings``, valid Unicode in every string
    and key (no lone surrogates, which UTF-8 cannot carry upstream). Iterative: the
    body's own depth cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            for key, item in node.items():
                if strings:
                    _check_text(key)
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                elif strings and isinstance(item, str):
                    _check_text(item)
        elif isinstance(node, list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            for item in node:
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                elif strings and isinstance(item, str):
                    _check_text(item)
        elif strings and isinstance(node, str):
            _check_text(node)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJson(
            "JSON strings must be valid Unicode (a lone surrogate was sent)"
        ) from None


def parse_json(raw: bytes) -> Any:
    """A client's JSON body, strict (RFC 8259: no NaN/Infinity), at most MAX_JSON_DEPTH
    deep, valid Unicode only. Raises InvalidJson; never RecursionError.

    orjson parses first (fast, refuses lone surrogates, stops at depth 1024); what it
    refuses goes through ``json.loads`` only for what orjson cannot represent (integers
    beyond 64 bits), and is then checked whole. The depth of an orjson result is walked
    only when the body has more brackets than the limit, so a typical call pays nothing."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "depth" in reason or "recursion" in reason.lower():
            raise InvalidJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        if "surrogate" in reason:
            raise InvalidJson(
                "JSON strings must be valid Unicode (a lone surrogate was sent)"
            ) from None
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except RecursionError:
            raise InvalidJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        except (UnicodeDecodeError, ValueError):
            raise InvalidJson("the body is not valid JSON") from None
        _check(value, strings=True)
        return value
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        _check(value, strings=False)
    return value
