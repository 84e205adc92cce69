"""How providers BILL a request: an implementation independent of ``keyfob.pricing``.

Written from the providers' own documentation, not from Keyfob's code (image sizes are
read by hand here, Keyfob uses ``imagesize``; formulas are coded again), so a test that
compares Keyfob's reserved bound with this bill checks the bound against the providers'
rules, not against itself. Used by the adversarial upstream (``adversarial_upstream.py``)
to bill like a real provider, and by ``test_input_bound.py`` (Hypothesis: reserved >=
billed, per surface).

Where the provider has a choice Keyfob cannot see (how big a URL image is, what a file id
holds, how many searches the model runs), ``Upstream`` holds the choice, and by default
it is the worst one: the largest image the formula allows, a file that fills the context
window, every allowed tool use, each feeding a full context window back.

Text: byte-level BPE tokenizers spend at least one byte per token, so the worst a text can
bill is one token per UTF-8 byte; chat templates add a few tokens per message (OpenAI's
cookbook: 3 per message, 1 per name, 3 to prime the reply; Anthropic's tool-use system
prompt: 346 tokens, 530 on Claude 3 Opus).

Sources (checked 2026-12): platform.openai.com/docs/guides/images-vision (calculating
costs), docs.anthropic.com/en/docs/build-with-claude/vision (image costs) and
.../agents-and-tools/tool-use/overview (pricing, tool-use system prompt tokens),
.../tool-use/web-search-tool (usage and pricing), ai.google.dev/gemini-api/docs/tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# --- image sizes, read from the headers by hand -----------------------------------------


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, JPEG or WebP image, from its header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return (w, h) if w and h else None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return (w, h) if w and h else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return (w & 0x3FFF, h & 0x3FFF) if w & 0x3FFF and h & 0x3FFF else None
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None
        i += 2 + length
    return None


def data_url_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return image_size(base64.b64decode(url.split(",", 1)[1]))
    except (binascii.Error, ValueError):
        return None


def b64_size(data: Any) -> tuple[int, int] | None:
    if not isinstance(data, str):
        return None
    try:
        return image_size(base64.b64decode(data))
    except (binascii.Error, ValueError):
        return None


# --- the formulas ------------------------------------------------------------------------

#: OpenAI tile models: (base tokens, tokens per 512-px tile), longest prefix first.
OPENAI_TILES: list[tuple[str, int, int]] = [
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5-chat", 70, 140),
    ("gpt-5", 70, 140),
    ("gpt-4.1", 85, 170),
    ("gpt-4.5", 85, 170),
    ("gpt-4o", 85, 170),
    ("gpt-4-turbo", 85, 170),
    ("chatgpt-4o", 85, 170),
    ("o1", 75, 150),
    ("o3", 75, 150),
]
#: OpenAI 32-px patch models and their multipliers.
OPENAI_PATCHES: list[tuple[str, Decimal]] = [
    ("gpt-5-mini", Decimal("1.62")),
    ("gpt-5-nano", Decimal("2.46")),
    ("gpt-4.1-mini", Decimal("1.62")),
    ("gpt-4.1-nano", Decimal("2.46")),
    ("o4-mini", Decimal("1.72")),
]


def _bare(model: str) -> str:
    return model.lower().rsplit("/", 1)[-1]


def openai_image_tokens(model: str, width: int, height: int, detail: str | None) -> int:
    """OpenAI's formula; ``detail`` None or "auto" is billed as "high" (the model may)."""
    name = _bare(model)
    for prefix, multiplier in OPENAI_PATCHES:
        if name.startswith(prefix):
            return _openai_patches(width, height, multiplier)
    for prefix, base, tile in sorted(OPENAI_TILES, key=lambda t: -len(t[0])):
        if name.startswith(prefix):
            if detail == "low":
                return base
            w, h = float(width), float(height)
            if w > 2048 or h > 2048:
                ratio = 2048 / max(w, h)
                w, h = w * ratio, h * ratio
            if min(w, h) > 768:
                ratio = 768 / min(w, h)
                w, h = w * ratio, h * ratio
            w, h = round(w), round(h)  # a resized image has whole pixels
            return base + tile * math.ceil(w / 512) * math.ceil(h / 512)
    raise KeyError(f"no OpenAI image rule known here for {model!r}")


def _openai_patches(width: int, height: int, multiplier: Decimal) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        # Scale down to fit 1,536 patches, then fit the patch grid (OpenAI's steps B-C).
        r = math.sqrt(32 * 32 * 1536 / (width * height))
        r *= min(
            math.floor(width * r / 32) / (width * r / 32),
            math.floor(height * r / 32) / (height * r / 32),
        )
        patches = math.ceil(width * r / 32) * math.ceil(height * r / 32)
    return math.ceil(min(patches, 1536) * multiplier)


def anthropic_image_tokens(width: int, height: int) -> int:
    """Anthropic: long edge at most 1568 px and about 1.15 MP (1,600 tokens), then w*h/750."""
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        ratio = 1568 / max(w, h)
        w, h = w * ratio, h * ratio
    if w * h / 750 > 1600:
        ratio = math.sqrt(1600 * 750 / (w * h))
        w, h = w * ratio, h * ratio
    return math.ceil(int(w) * int(h) / 750)


def gemini_image_tokens(model: str, width: int, height: int) -> int:
    """Gemini: 258 tokens when both sides <= 384 px, else 258 per crop unit; Gemini 3 by
    media resolution (ultra high: 2,240 at most)."""
    if _bare(model).startswith("gemini-3"):
        return 2240
    if width <= 384 and height <= 384:
        return 258
    unit = min(max(int(min(width, height) // 1.5), 256), 768)
    return 258 * math.ceil(width / unit) * math.ceil(height / unit)


def image_tokens(model: str, width: int, height: int, detail: str | None = None) -> int:
    name = _bare(model)
    if name.startswith("claude"):
        return anthropic_image_tokens(width, height)
    if name.startswith("gemini"):
        return gemini_image_tokens(model, width, height)
    return openai_image_tokens(model, width, height, detail)


#: Sizes an adversarial upstream picks for an image it fetches by URL (the worst of each
#: formula: OpenAI tiles and patches, Anthropic's pixel cap, Gemini's crop units).
WORST_URL_SIZES = [(2048, 768), (768, 2048), (1092, 1092), (1568, 784), (3072, 384), (2048, 2048)]


def url_image_tokens(model: str, detail: str | None = None) -> int:
    return max(image_tokens(model, w, h, detail) for w, h in WORST_URL_SIZES)


# --- what one request bills --------------------------------------------------------------

#: Anthropic's tool-use system prompt, at most (Claude 3 Opus, tool_choice auto).
ANTHROPIC_TOOL_SYSTEM_PROMPT = 530
#: Anthropic-defined client tools' hidden definitions (computer use adds its system prompt).
ANTHROPIC_DEFINED_TOOLS = {"bash": 245, "text_editor": 700, "computer": 735 + 499}


@dataclass
class Upstream:
    """The upstream's choices Keyfob cannot see; the defaults are the worst ones."""

    context_window: int
    #: (width, height) of images fetched by URL; None: the worst size for the model.
    url_image_size: tuple[int, int] | None = None
    #: Tokens a file id / URL document holds; None: the whole context window.
    referenced_tokens: int | None = None
    #: Server-tool uses the model makes; None: every use the request allows.
    tool_uses: int | None = None
    #: Fee per web search, micro-USD.
    search_micro_usd: int = 10_000
    per_message: int = 4
    per_request: int = 3


@dataclass
class Bill:
    input_tokens: int
    output_tokens: int
    tool_uses: dict[str, int] = field(default_factory=dict)
    fees_micro_usd: int = 0
    #: Input tokens written to the prompt cache (part of input_tokens), for an hour.
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def cost_micro_usd(self, input_per_mtok: Decimal, output_per_mtok: Decimal) -> int:
        """Anthropic's rates: a five-minute cache write costs 1.25x input, an hour's 2x."""
        plain = self.input_tokens - self.cache_write_tokens
        five = self.cache_write_tokens - self.cache_write_1h_tokens
        exact = (
            plain * input_per_mtok
            + five * input_per_mtok * Decimal("1.25")
            + self.cache_write_1h_tokens * input_per_mtok * 2
            + self.output_tokens * output_per_mtok
        )
        return math.ceil(exact) + self.fees_micro_usd


def _cache_ttl(value: Any) -> str | None:
    """The longest cache TTL a body asks for anywhere (the upstream writes the prompt)."""
    text = json.dumps(value)
    if '"cache_control"' not in text:
        return None
    return "1h" if '"ttl": "1h"' in text else "5m"


def _with_cache(bill: Bill, body: dict[str, Any]) -> Bill:
    ttl = _cache_ttl(body)
    if ttl is not None:  # the worst: the whole prompt written
        bill.cache_write_tokens = bill.input_tokens
        bill.cache_write_1h_tokens = bill.input_tokens if ttl == "1h" else 0
    return bill


def _utf8(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _url_image(model: str, url: str, detail: str | None, up: Upstream) -> int:
    size = data_url_size(url)
    if size is None:
        if up.url_image_size is not None:
            return image_tokens(model, *up.url_image_size, detail)
        return url_image_tokens(model, detail)
    return image_tokens(model, *size, detail)


def _referenced(up: Upstream) -> int:
    return up.context_window if up.referenced_tokens is None else up.referenced_tokens


def _chat_part(model: str, part: Any, up: Upstream) -> int:
    if not isinstance(part, dict):
        return _utf8(part)
    kind = part.get("type")
    if kind == "text":
        return _utf8(part.get("text"))
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        return _url_image(model, str(url), detail if detail != "auto" else None, up)
    if kind == "file":  # a file id or inline file data (a PDF: text and page images)
        return _referenced(up)
    return _utf8(part)


def bill_chat(body: dict[str, Any], *, model: str, output_tokens: int, up: Upstream) -> Bill:
    """What a chat-completions upstream bills for ``body`` and ``output_tokens``."""
    tokens = up.per_request
    for m in body.get("messages") or []:
        tokens += up.per_message
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            tokens += sum(_chat_part(model, p, up) for p in content)
        else:
            tokens += _utf8(content)
        for key in ("name", "tool_call_id", "tool_calls", "function_call", "refusal"):
            tokens += _utf8(m.get(key))
    for key in ("tools", "functions", "response_format", "tool_choice"):
        tokens += _utf8(body.get(key))
    bill = Bill(tokens, output_tokens)
    if body.get("web_search_options") is not None:  # one search, results in the context
        bill.tool_uses["web_search"] = 1
        bill.fees_micro_usd += up.search_micro_usd
        bill.input_tokens = max(bill.input_tokens, up.context_window)
    return _with_cache(bill, body)


def _block(model: str, block: Any, up: Upstream) -> int:
    if not isinstance(block, dict):
        return _utf8(block)
    kind = block.get("type")
    if kind == "text":
        return _utf8(block.get("text"))
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            size = b64_size(source.get("data"))
            if size is not None:
                return image_tokens(model, *size)
        if up.url_image_size is not None:
            return image_tokens(model, *up.url_image_size)
        return url_image_tokens(model)
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return _utf8(source.get("data")) + _utf8(block.get("title"))
        if source.get("type") == "content":
            return sum(_block(model, b, up) for b in source.get("content") or [])
        return _referenced(up)  # a PDF (inline, URL or file id): pages as text and images
    if kind == "tool_result":
        content = block.get("content")
        parts = content if isinstance(content, list) else [content]
        return 4 + sum(_block(model, p, up) for p in parts)
    if kind == "tool_use":
        return _utf8(block.get("name")) + _utf8(block.get("input"))
    if kind == "thinking":
        return _utf8(block.get("thinking"))
    return _utf8(block)


def bill_messages(body: dict[str, Any], *, model: str, output_tokens: int, up: Upstream) -> Bill:
    """What an Anthropic Messages upstream bills: the prompt, then, for each server-side
    tool use (web search, web fetch), another sampling pass reading up to a whole context
    window (the results are input tokens), plus the per-use fee."""
    system = body.get("system")
    if isinstance(system, list):
        tokens = up.per_request + sum(_block(model, b, up) for b in system)
    else:
        tokens = up.per_request + _utf8(system)
    for m in body.get("messages") or []:
        tokens += up.per_message
        content = m.get("content") if isinstance(m, dict) else m
        parts = content if isinstance(content, list) else [content]
        tokens += sum(_block(model, b, up) for b in parts)
    tools = body.get("tools") or []
    if tools:
        tokens += ANTHROPIC_TOOL_SYSTEM_PROMPT
    uses: dict[str, int] = {}
    fees = 0
    for t in tools:
        tokens += _utf8(t)
        kind = str(t.get("type") or "custom") if isinstance(t, dict) else "custom"
        for prefix, hidden in ANTHROPIC_DEFINED_TOOLS.items():
            if kind.startswith(prefix + "_"):
                tokens += hidden
        if kind.startswith(("web_search_", "web_fetch_")):
            allowed = int(t.get("max_uses") or 0)
            n = allowed if up.tool_uses is None else min(up.tool_uses, allowed)
            name = "web_search" if kind.startswith("web_search_") else "web_fetch"
            uses[name] = uses.get(name, 0) + n
            if name == "web_search":
                fees += n * up.search_micro_usd
    passes = sum(uses.values())
    return _with_cache(Bill(tokens + passes * up.context_window, output_tokens, uses, fees), body)


def bill_responses(body: dict[str, Any], *, model: str, output_tokens: int, up: Upstream) -> Bill:
    """What an OpenAI Responses upstream bills (function tools and inline content only;
    Keyfob refuses built-in tools and stored state on this surface)."""
    tokens = up.per_request + _utf8(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items or []:
        tokens += up.per_message
        content = item.get("content")
        if isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and p.get("type") == "input_image":
                    detail = p.get("detail")
                    url = str(p.get("image_url"))
                    tokens += _url_image(model, url, detail if detail != "auto" else None, up)
                elif isinstance(p, dict):
                    tokens += _utf8(p.get("text") or p.get("refusal"))
        else:
            tokens += _utf8(content)
        for key in ("name", "arguments", "output", "call_id"):
            tokens += _utf8(item.get(key))
    for key in ("tools", "tool_choice", "text"):
        tokens += _utf8(body.get(key))
    return Bill(tokens, output_tokens)


# --- images to send ------------------------------------------------------------------------

IMAGE_FORMATS = ("png", "gif", "jpeg", "webp-vp8x", "webp-vp8l")


def make_image(fmt: str, width: int, height: int) -> bytes:
    """The header of an image of ``width`` x ``height`` px (all a size reader needs)."""
    if fmt == "png":
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4
    if fmt == "gif":
        return b"GIF89a" + struct.pack("<HH", width, height) + b"\0\0\0"
    if fmt == "jpeg":
        app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
        return b"\xff\xd8" + app0 + sof + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9"
    if fmt == "webp-vp8x":
        size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunk = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + size
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
    if fmt == "webp-vp8l":  # sides up to 16,384 px
        bits = (width - 1) | ((height - 1) << 14)
        chunk = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + bits.to_bytes(4, "little") + b"\0"
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
    raise ValueError(fmt)


def media_type(fmt: str) -> str:
    return "image/webp" if fmt.startswith("webp") else f"image/{fmt}"


def data_url(fmt: str, width: int, height: int) -> str:
    payload = base64.b64encode(make_image(fmt, width, height)).decode()
    return f"data:{media_type(fmt)};base64,{payload}"
