"""Upper bounds on what a call's input can bill, without a tokenizer (invariant 1).

The rule per content kind (docs/ARCHITECTURE.md, "The input bound"):

- **Text** (messages, system, tool definitions, tool calls and results): its UTF-8 bytes.
  Byte-level BPE tokenizers (GPT, Llama, Gemma, Claude) spend at least one byte per token.
  Structured values (tool schemas, tool-call arguments) count as JSON with spaces after
  ``,`` and ``:`` (providers render them so, and a translation re-renders them). Chat
  templates add a few tokens per message and per request; tool definitions add the
  provider's tool-use system prompt (Anthropic: up to 530 tokens) and Anthropic-defined
  tools their hidden definitions.
- **Images**: the serving model's own formula (``images.py``) from the dimensions in the
  image's header when it is inline; its largest possible cost when the size cannot be
  known (a URL, a file id, an unreadable header).
- **Content billed by reference** (an OpenAI ``file`` part, an Anthropic PDF ``document``
  whether inline, by URL or file id, a ``container_upload``): the model's context window,
  the most any input can hold.
- **Server-side tools**: their per-use price times a bound on uses (``max_uses``), plus,
  for each use, another sampling pass that reads up to a whole context window (search and
  fetch results are input tokens). A tool with no bound on uses, or billed by time (code
  execution), or a remote MCP server is refused with a clear error.

The bound is loose (about 4x for English text) and that is the point: it can never be
below what the upstream bills, so a reservation covers its settlement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from keyfob.pricing.images import ImageRule, base64_dimensions, data_url_dimensions
from keyfob.pricing.model_limits import ModelLimits, ToolPrice, family_image_rule, shipped_tool
from keyfob.pricing.usage import TokenUsage

TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 16
#: The provider's tool-use system prompt when a request carries tools (Anthropic: 346
#: tokens, 530 on Claude 3 Opus; OpenAI renders function definitions in a namespace).
TOOLS_SYSTEM_PROMPT_TOKENS = 600
#: Hidden definitions of Anthropic-defined client tools (computer use: 735 tokens plus
#: its 499-token system prompt; text editor 700; bash 245), with room to spare.
ANTHROPIC_DEFINED_TOOL_TOKENS = 1500
ANTHROPIC_DEFINED_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")
#: Cache writes as a multiple of the input price (Anthropic's, which OpenRouter passes on).
CACHE_WRITE_5M_FACTOR = Fraction(5, 4)
CACHE_WRITE_1H_FACTOR = Fraction(2)
#: Largest ``max_uses`` accepted on a server-side tool.
MAX_TOOL_USES = 100


#: Tools used once the request is sent, whatever the model does (a search model searches,
#: OpenRouter's web plugin fetches its results): charged as quoted when the upstream
#: reports no count. Anthropic's server tools are reported (``server_tool_use``).
FIXED_TOOLS = frozenset({"openai-web-search", "openrouter-web-result"})


def fixed_uses(tool_uses: dict[str, int] | None) -> dict[str, int] | None:
    """The uses of ``tool_uses`` that happen for sure (``FIXED_TOOLS``), None if none."""
    if not tool_uses:
        return None
    fixed = {name: n for name, n in tool_uses.items() if name in FIXED_TOOLS}
    return fixed or None


class Unbounded(ValueError):
    """Nothing bounds what this request can bill: the gateway refuses it with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class InputBound:
    """Upper bounds on one call's input tokens and per-use fees (integer micro-USD)."""

    tokens: int
    #: Per-use fees of server-side tools, charged besides tokens.
    fees_micro_usd: int = 0
    #: Server-tool uses the fees are for, by tool (``anthropic-web-search``: 5).
    tool_uses: dict[str, int] = field(default_factory=dict)
    #: The cache TTL the body asks for ("5m", "1h"): its tokens are then counted at the
    #: cache-write premium (``with_cache_writes``).
    cache_ttl: str | None = None

    def usage(self, output_tokens: int) -> TokenUsage:
        """The worst case to price: this input, ``output_tokens`` out."""
        return TokenUsage(self.tokens, output_tokens, tool_uses=self.tool_uses or None)

    def with_cache_writes(self, ttl: str | None) -> InputBound:
        """A body marking any block ``cache_control`` may have its whole prompt written to
        the cache, billed above the input price (Anthropic: 1.25x for five minutes, 2x for
        an hour). The premium is counted in tokens priced as input, so every consumer of
        the bound (the quote, the fit, the overrun check) covers it without knowing."""
        if ttl is not None:
            factor = CACHE_WRITE_1H_FACTOR if ttl == "1h" else CACHE_WRITE_5M_FACTOR
            self.tokens = math.ceil(self.tokens * factor)
            self.cache_ttl = ttl
        return self


def _ttl(control: Any) -> str | None:
    if not isinstance(control, dict):
        return None
    return "1h" if control.get("ttl") == "1h" else "5m"


def _longer(a: str | None, b: str | None) -> str | None:
    return "1h" if "1h" in (a, b) else a or b


def _parts_ttl(parts: Any) -> str | None:
    found: str | None = None
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, dict):
                if "cache_control" in part:
                    found = _longer(found, _ttl(part["cache_control"]))
                inner = part.get("content")  # a tool result's blocks
                if isinstance(inner, list):
                    found = _longer(found, _parts_ttl(inner))
    return found


def cache_ttl(body: dict[str, Any]) -> str | None:
    """The longest ``cache_control`` TTL in a body ("5m", "1h"), None if none.

    Anthropic (and OpenRouter passing it on) bills a cache write above the input price,
    so a body that marks any block for caching may pay that premium on its whole prompt.
    Marks sit on the request, on system and tool entries, and on content blocks."""
    found = _ttl(body.get("cache_control"))
    found = _longer(found, _parts_ttl(body.get("system")))
    found = _longer(found, _parts_ttl(body.get("tools")))
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                if "cache_control" in m:
                    found = _longer(found, _ttl(m["cache_control"]))
                found = _longer(found, _parts_ttl(m.get("content")))
    return found


class _Model:
    """What the bound needs to know about the serving model."""

    __slots__ = ("context", "limits", "name")

    def __init__(self, model: str, limits: ModelLimits | None) -> None:
        self.name = model
        self.limits = limits
        self.context: int | None = limits.context_window_tokens if limits else None

    @property
    def image(self) -> ImageRule:
        return self.limits.image() if self.limits else family_image_rule(self.name)

    def context_window(self, what: str, param: str | None) -> int:
        if self.context is None:
            raise Unbounded(
                f"{what} is billed by what it holds, bounded only by the model's context "
                f"window, and no context window is known for model {self.name!r}; set one "
                f"with `keyfob providers limits PROVIDER {self.name} --context N`",
                param,
            )
        return self.context

    def tool(self, name: str) -> ToolPrice:
        return self.limits.tool_price(name) if self.limits else shipped_tool(name)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _str_bytes(value: str) -> int:
    # "surrogatepass": a lone surrogate from a client is counted, never a crash.
    return len(value.encode("utf-8", "surrogatepass"))


def _arguments_bytes(raw: Any) -> int:
    """A tool call's arguments: as sent, or re-rendered with spaces, whichever is longer."""
    if not isinstance(raw, str):
        return _json_bytes(raw)
    try:
        parsed = json.loads(raw)
    except ValueError:
        return _str_bytes(raw)
    return max(_str_bytes(raw), _json_bytes(parsed))


def _text(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return _str_bytes(value)
    return _json_bytes(value)


def _image(m: _Model, url: Any, detail: Any) -> int:
    detail = detail if detail == "low" else None  # "auto" may be billed as "high"
    size = data_url_dimensions(url) if isinstance(url, str) else None
    if size is None:
        return m.image.max_tokens(detail)
    return m.image.tokens(size[0], size[1], detail)


# --- OpenAI chat completions -----------------------------------------------------------


def _chat_part(m: _Model, part: Any, where: str) -> int:
    if not isinstance(part, dict):
        return _text(part)
    kind = part.get("type")
    if kind == "text":
        return _text(part.get("text"))
    if kind in ("image_url", "input_image"):
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
        return _image(m, url, detail)
    if kind in ("file", "input_file"):
        return m.context_window(f"{where}: a file part", where)
    return _text(part)


_CHAT_EXTRAS = frozenset(
    ("tools", "functions", "response_format", "tool_choice", "prediction",
     "web_search_options", "plugins")
)  # fmt: skip


def _chat_tools(m: _Model, body: dict[str, Any]) -> tuple[int, InputBound]:
    """Tool definitions' tokens, and server-side tools' fees and extra passes."""
    tools = body.get("tools") or []
    functions = body.get("functions") or []
    extra = InputBound(0)
    tokens = TOOLS_SYSTEM_PROMPT_TOKENS if tools or functions else 0
    for i, t in enumerate(tools):
        # No type at all is not "function": Gemini reads {"google_search": {}} as grounding.
        kind = t.get("type") if isinstance(t, dict) else None
        if kind not in ("function", "custom"):
            raise Unbounded(
                f"tools[{i}]: a tool of type {kind!r} runs on the provider's side and is "
                "billed per use with no bound Keyfob can reserve for; only function "
                "and custom tools are accepted here",
                f"tools[{i}].type",
            )
        tokens += _json_bytes(t)
    tokens += _json_bytes(functions) if functions else 0
    for key in ("response_format", "tool_choice", "prediction"):
        if body.get(key) is not None:
            tokens += _json_bytes(body[key])
    if body.get("web_search_options") is not None:
        # A search model runs one search; its results join the same context.
        price = m.tool("openai-web-search")
        extra.fees_micro_usd += price.micro_usd_per_use
        extra.tool_uses[price.name] = 1
        extra.tokens = m.context_window("web_search_options", "web_search_options")
    plugins = body.get("plugins")
    if isinstance(plugins, list):  # OpenRouter's web plugin: a fee per result
        for p in plugins:
            if isinstance(p, dict) and p.get("id") == "web":
                results = p.get("max_results", 5)
                if not isinstance(results, int) or isinstance(results, bool) or results < 0:
                    raise Unbounded("plugins: web max_results must be an integer", "plugins")
                price = m.tool("openrouter-web-result")
                extra.fees_micro_usd += price.micro_usd_per_use * results
                extra.tool_uses[price.name] = extra.tool_uses.get(price.name, 0) + results
                extra.tokens = m.context_window("the web plugin", "plugins")
    if m.name.endswith(":online"):  # OpenRouter: the web plugin with its defaults
        price = m.tool("openrouter-web-result")
        extra.fees_micro_usd += price.micro_usd_per_use * 5
        extra.tool_uses[price.name] = extra.tool_uses.get(price.name, 0) + 5
        extra.tokens = m.context_window("an :online model", "model")
    return tokens, extra


def chat_input(body: dict[str, Any], model: str, limits: ModelLimits | None) -> InputBound:
    """Bound the input of an OpenAI chat-completions body served by ``model``.

    One pass over the messages (this runs on every call): strings are measured at once,
    content parts and tool calls by their rules, cache marks noted on the way."""
    m = _Model(model, limits)
    total = TOKENS_PER_REQUEST
    ttl = _ttl(body.get("cache_control"))
    for i, message in enumerate(body.get("messages") or []):
        total += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            total += _text(message)
            continue
        for key, value in message.items():
            if key == "role":
                continue
            if type(value) is str:
                total += _str_bytes(value)
            elif key == "content" and isinstance(value, list):
                total += sum(_chat_part(m, p, f"messages[{i}].content") for p in value)
                ttl = _longer(ttl, _parts_ttl(value))
            elif key == "tool_calls" and isinstance(value, list):
                total += _json_bytes(value)
                for call in value:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        total += _arguments_bytes(fn.get("arguments"))
            else:
                total += _text(value)
                if key == "cache_control":
                    ttl = _longer(ttl, _ttl(value))
    if body.keys() & _CHAT_EXTRAS or model.endswith(":online"):
        tools_tokens, extra = _chat_tools(m, body)
        ttl = _longer(ttl, _parts_ttl(body.get("tools")))
    else:
        tools_tokens, extra = 0, InputBound(0)
    total += tools_tokens
    # A search adds its results to the same pass: up to the context window in all.
    bound = InputBound(max(total, extra.tokens), extra.fees_micro_usd, extra.tool_uses)
    return bound.with_cache_writes(ttl)


# --- Anthropic Messages ------------------------------------------------------------------


def _block(m: _Model, block: Any, where: str) -> int:
    if not isinstance(block, dict):
        return _text(block)
    kind = block.get("type")
    if kind == "text":
        return _text(block.get("text")) + _text(block.get("citations"))
    if kind == "image":
        source = block.get("source")
        size = None
        if isinstance(source, dict) and source.get("type") == "base64":
            size = base64_dimensions(source.get("data"), source.get("media_type"))
        if size is None:
            return m.image.max_tokens()
        return m.image.tokens(size[0], size[1])
    if kind == "document":
        source = block.get("source")
        stype = source.get("type") if isinstance(source, dict) else None
        meta = _text(block.get("title")) + _text(block.get("context"))
        citations = block.get("citations")
        if isinstance(citations, dict) and citations.get("enabled"):
            # Citations chunk the document and add instructions: twice its bytes, plus.
            meta += TOOLS_SYSTEM_PROMPT_TOKENS + _json_bytes(source)
        if stype == "text" and isinstance(source, dict):
            return meta + _text(source.get("data"))
        if stype == "content" and isinstance(source, dict):
            content = source.get("content")
            parts = content if isinstance(content, list) else [content]
            return meta + sum(_block(m, p, where) for p in parts)
        # A PDF (base64, URL or file id): every page as text and as an image.
        return meta + m.context_window(f"{where}: a PDF document", where)
    if kind == "container_upload":
        return m.context_window(f"{where}: a container upload", where)
    if kind in ("tool_result", "web_search_tool_result", "web_fetch_tool_result"):
        content = block.get("content")
        parts = content if isinstance(content, list) else [content]
        return 16 + _text(block.get("tool_use_id")) + sum(_block(m, p, where) for p in parts)
    if kind in ("tool_use", "server_tool_use"):
        return _text(block.get("name")) + _text(block.get("id")) + _json_bytes(block.get("input"))
    return _text(block)


def _anthropic_tools(m: _Model, body: dict[str, Any]) -> tuple[int, InputBound]:
    tools = body.get("tools") or []
    extra = InputBound(0)
    if body.get("mcp_servers"):
        raise Unbounded(
            "mcp_servers: a remote MCP server's tools run on the provider's side with no "
            "bound on their uses or results; Keyfob cannot reserve for them",
            "mcp_servers",
        )
    if body.get("container") is not None:
        raise Unbounded(
            "container: code execution is billed by container time, which no request "
            "field bounds; Keyfob cannot reserve for it",
            "container",
        )
    tokens = TOOLS_SYSTEM_PROMPT_TOKENS if tools else 0
    passes = 0
    for i, t in enumerate(tools):
        tokens += _json_bytes(t)
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in (None, "custom"):
            continue
        kind = str(kind)
        if kind.startswith(ANTHROPIC_DEFINED_TOOLS):
            tokens += ANTHROPIC_DEFINED_TOOL_TOKENS
            continue
        if kind.startswith(("web_search_", "web_fetch_")):
            uses = t.get("max_uses") if isinstance(t, dict) else None
            if not isinstance(uses, int) or isinstance(uses, bool) or uses < 1:
                raise Unbounded(
                    f"tools[{i}]: server tool {kind!r} needs max_uses (an integer from 1 "
                    f"to {MAX_TOOL_USES}): each use is billed, and Keyfob reserves for "
                    "every allowed use before the call",
                    f"tools.{i}.max_uses",
                )
            if uses > MAX_TOOL_USES:
                raise Unbounded(f"tools[{i}].max_uses: at most {MAX_TOOL_USES}", f"tools.{i}")
            name = (
                "anthropic-web-search" if kind.startswith("web_search_") else "anthropic-web-fetch"
            )
            price = m.tool(name)
            extra.fees_micro_usd += price.micro_usd_per_use * uses
            extra.tool_uses[name] = extra.tool_uses.get(name, 0) + uses
            passes += uses
            continue
        raise Unbounded(
            f"tools[{i}]: server tool {kind!r} has no per-request bound on what it bills "
            "(code execution is billed by time); Keyfob cannot reserve for it",
            f"tools.{i}.type",
        )
    if passes:
        # Each use feeds its results to another sampling pass, billed as input up to a
        # whole context window.
        extra.tokens = passes * m.context_window("a server-side tool's results", "tools")
    return tokens, extra


def messages_input(body: dict[str, Any], model: str, limits: ModelLimits | None) -> InputBound:
    """Bound the input of an Anthropic Messages body served by ``model``."""
    m = _Model(model, limits)
    system = body.get("system")
    total = TOKENS_PER_REQUEST
    if isinstance(system, list):
        total += sum(_block(m, b, "system") for b in system)
    else:
        total += _text(system)
    for i, message in enumerate(body.get("messages") or []):
        total += TOKENS_PER_MESSAGE
        content = message.get("content") if isinstance(message, dict) else message
        parts = content if isinstance(content, list) else [content]
        total += sum(_block(m, p, f"messages.{i}.content") for p in parts)
    tools_tokens, extra = _anthropic_tools(m, body)
    if body.get("tool_choice") is not None:
        total += _json_bytes(body["tool_choice"])
    total += tools_tokens + extra.tokens
    return InputBound(total, extra.fees_micro_usd, extra.tool_uses).with_cache_writes(
        cache_ttl(body)
    )


# --- compatibility and the other surfaces -------------------------------------------------


def chat_input_bound(
    body: dict[str, Any], *, model: str = "", limits: ModelLimits | None = None
) -> int:
    """The input tokens of ``chat_input`` (no fees), for callers that quote tokens only."""
    return chat_input(body, model, limits).tokens


def messages_input_bound(
    body: dict[str, Any], *, model: str = "", limits: ModelLimits | None = None
) -> int:
    return messages_input(body, model, limits).tokens


def chat_output_bound(body: dict[str, Any], *, default_max_output_tokens: int) -> int:
    """Bound the output tokens: max_completion_tokens or max_tokens, times ``n``."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = default_max_output_tokens
    n = body.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        n = 1
    return limit * n


def embeddings_input_bound(body: dict[str, Any]) -> int:
    """Bound an embeddings input: UTF-8 bytes of strings, or the count of token ids."""
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += _str_bytes(item) + 2
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total
