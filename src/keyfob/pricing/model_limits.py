"""Model limits: context window, output maximum, image rule and per-use tool prices.

Shipped as dated data with sources (``model_limits.toml``, beside this module), completed
by genai-prices' snapshot (context windows, per-model web-search prices) and overridden by
the person (``keyfob providers limits PROVIDER MODEL --context N --max-output N
--tool-price NAME=USD``).

Why: a worst-case quote must be a true upper bound. Content billed by reference (an
OpenAI ``file_id``, an Anthropic URL document) can only be bounded by the context window;
images by their provider's formula; server-side tools by their per-use price. When two
sources disagree on a context window, the larger wins: a bound too high reserves more, a
bound too low lets a call overspend.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from importlib.resources import files
from typing import Any

from genai_prices import data as genai_data

from keyfob.pricing.images import ImageRule
from keyfob.store.records import LimitOverride

__all__ = ["LimitOverride", "ModelLimits", "ToolPrice", "limits_for"]

#: Output maximum assumed when no source publishes one (today's default output limit).
DEFAULT_MAX_OUTPUT_TOKENS = 4096

#: Dated or variant suffixes a model name may carry beyond a listed name.
_SUFFIX = re.compile(
    r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{3}|latest|exp|preview(?:-\d{2}-\d{2})?))?"
    r"(?:[:@].*)?$"
)
_DOT = re.compile(r"(?<=\d)\.(?=\d)")

#: Tools whose per-use price genai-prices may know per model (``web_searches_kcount``).
SEARCH_TOOLS = frozenset({"anthropic-web-search", "openai-web-search", "gemini-google-search"})

#: genai-prices' provider ids for Keyfob's provider kinds (a hint; any provider is tried).
_GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


@dataclass(frozen=True, slots=True)
class ToolPrice:
    """The fee for one use of a server-side tool, in integer micro-USD."""

    name: str
    micro_usd_per_use: int
    source: str


@dataclass(frozen=True, slots=True)
class ModelLimits:
    context_window_tokens: int
    max_output_tokens: int
    #: Where the numbers come from ("shipped: anthropic-models", "genai-prices", "override").
    source: str
    #: The date the shipped data was checked (ISO date).
    as_of: str
    #: False when no source publishes the output maximum (then it is the default).
    max_output_known: bool = True
    image_rule: ImageRule | None = None
    #: The model's own web-search price (genai-prices), when it has one.
    web_search_micro_usd_per_use: int | None = None
    #: The person's per-use tool prices ((tool name, micro-USD), ...): they win.
    tool_overrides: tuple[tuple[str, int], ...] = ()

    def image(self) -> ImageRule:
        """The image rule (always set by ``limits_for``; the unknown-model rule else)."""
        return self.image_rule if self.image_rule is not None else family_image_rule("")

    def tool_price(self, name: str) -> ToolPrice:
        """A server-side tool's per-use price (``model_limits.toml``'s ``[tools]``); for a
        search tool, the larger of that and the model's own price in genai-prices. The
        person's own price (``keyfob providers limits --tool-price``) wins over both."""
        for own_name, micro_usd in self.tool_overrides:
            if own_name == name:
                return ToolPrice(name, micro_usd, "override")
        shipped = _data().tools[name]
        own = self.web_search_micro_usd_per_use
        if own is not None and name in SEARCH_TOOLS and own > shipped.micro_usd_per_use:
            return ToolPrice(name, own, "genai-prices")
        return shipped


@dataclass(frozen=True)
class _Entry:
    names: tuple[str, ...]
    context: int
    max_output: int | None
    image: str | None
    source: str


@dataclass(frozen=True)
class _Data:
    as_of: str
    sources: dict[str, str]
    rules: dict[str, ImageRule]
    families: dict[str, ImageRule]
    tools: dict[str, ToolPrice]
    by_name: dict[str, _Entry]


def normalize(model: str) -> str:
    """A model name as matched: lower case, no vendor prefix, dots between digits as dashes."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    return _DOT.sub("-", name)


def _rule(name: str, raw: dict[str, Any]) -> ImageRule:
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "source":
            continue
        if key == "multiplier":
            kwargs[key] = Decimal(str(value))
        elif key == "max_tokens":
            kwargs["cap_tokens"] = int(value)
        else:
            kwargs[key] = value
    return ImageRule(name=name, source=str(raw.get("source", "")), **kwargs)


@lru_cache(maxsize=1)
def _data() -> _Data:
    raw = tomllib.loads(files("keyfob.pricing").joinpath("model_limits.toml").read_text("utf-8"))
    rules = {name: _rule(name, r) for name, r in raw["image_rules"].items()}
    families = {
        prefix: ImageRule(
            f"family {prefix}", "max", "image_families", of=tuple(rules[n] for n in names)
        )
        for prefix, names in raw["image_families"].items()
    }
    tools = {
        name: ToolPrice(name, int(t["micro_usd_per_use"]), str(t["source"]))
        for name, t in raw["tools"].items()
    }
    by_name: dict[str, _Entry] = {}
    for m in raw["models"]:
        entry = _Entry(
            tuple(m["names"]),
            int(m["context"]),
            int(m["max_output"]) if "max_output" in m else None,
            m.get("image"),
            str(m["source"]),
        )
        if entry.image is not None and entry.image not in rules:
            raise ValueError(f"model_limits.toml: {entry.names[0]} names no rule {entry.image}")
        for name in entry.names:
            by_name[normalize(name)] = entry
    return _Data(str(raw["as_of"]), dict(raw["sources"]), rules, families, tools, by_name)


def image_rule_names() -> list[str]:
    """The image rules a person may pick in an override."""
    return sorted(_data().rules)


def tool_names() -> list[str]:
    """Every server-side tool with a per-use price."""
    return sorted(_data().tools)


def shipped_tool(name: str) -> ToolPrice:
    """A server-side tool's shipped per-use price (for a model with no known limits)."""
    return _data().tools[name]


@lru_cache(maxsize=4096)
def family_image_rule(model: str) -> ImageRule:
    """The image rule of ``model``'s family (longest listed prefix), else unknown-model's."""
    name = normalize(model)
    families = _data().families
    best = max((p for p in families if p != "unknown-model" and name.startswith(p)), key=len,
               default="unknown-model")  # fmt: skip
    return families[best]


def _shipped(model: str) -> _Entry | None:
    name = normalize(model)
    best: tuple[int, _Entry] | None = None
    for listed, entry in _data().by_name.items():
        fits = name.startswith(listed) and _SUFFIX.fullmatch(name, len(listed))
        if fits and (best is None or len(listed) > best[0]):
            best = (len(listed), entry)
    return best[1] if best is not None else None


def _genai(provider_kind: str, model: str) -> tuple[int | None, int | None]:
    """genai-prices' context window and web-search price (micro-USD per use) for a model."""
    hint = _GENAI_PROVIDER.get(provider_kind)
    ref = model.strip().lower()
    context: int | None = None
    search: int | None = None
    for provider in genai_data.providers:
        if hint is not None and provider.id != hint:
            continue
        for info in provider.models:
            if not (info.is_match(ref) or info.is_match(ref.rsplit("/", 1)[-1])):
                continue
            if info.context_window:
                context = max(context or 0, int(info.context_window))
            prices = info.prices if not isinstance(info.prices, list) else info.prices[-1].prices
            per_k = getattr(prices, "web_searches_kcount", None)
            if isinstance(per_k, Decimal):  # USD per 1,000 searches -> micro-USD per search
                search = max(search or 0, int((per_k * 1000).to_integral_value()))
            break
        if context is not None and hint is not None:
            break
    if context is None and hint is not None:
        return _genai("", model)
    return context, search


@lru_cache(maxsize=4096)
def _limits(provider_kind: str, model: str) -> ModelLimits | None:
    d = _data()
    entry = _shipped(model)
    gen_context, search = _genai(provider_kind, model)
    if entry is None and gen_context is None:
        return None
    context = max(entry.context if entry else 0, gen_context or 0)
    if entry is not None:
        source = f"shipped: {d.sources.get(entry.source, entry.source)}"
        if gen_context is not None and gen_context > entry.context:
            source += "; context window from genai-prices"
    else:
        source = "genai-prices (context window); output maximum not published"
    max_output = entry.max_output if entry is not None else None
    return ModelLimits(
        context_window_tokens=context,
        max_output_tokens=(
            max_output if max_output is not None else min(DEFAULT_MAX_OUTPUT_TOKENS, context)
        ),
        source=source,
        as_of=d.as_of,
        max_output_known=max_output is not None,
        image_rule=(
            d.rules[entry.image] if entry is not None and entry.image else family_image_rule(model)
        ),
        web_search_micro_usd_per_use=search,
    )


def limits_for(
    provider_kind: str, model: str, overrides: dict[str, LimitOverride] | None = None
) -> ModelLimits | None:
    """The limits of ``model`` served by a provider of ``provider_kind``; None if unknown.

    ``overrides`` (the person's, by model name) win field by field over shipped data."""
    found = _limits(provider_kind, model)
    o = (overrides or {}).get(model)
    if o is None:
        return found
    rule = _data().rules.get(o.image_rule) if o.image_rule else None
    if found is None:
        if o.context_window_tokens is None:
            return None
        context = o.context_window_tokens
        return ModelLimits(
            context_window_tokens=context,
            max_output_tokens=o.max_output_tokens or min(DEFAULT_MAX_OUTPUT_TOKENS, context),
            source="override",
            as_of="",
            max_output_known=o.max_output_tokens is not None,
            image_rule=rule or family_image_rule(model),
            tool_overrides=o.tool_prices,
        )
    return replace(
        found,
        context_window_tokens=o.context_window_tokens or found.context_window_tokens,
        max_output_tokens=o.max_output_tokens or found.max_output_tokens,
        max_output_known=found.max_output_known or o.max_output_tokens is not None,
        image_rule=rule or found.image_rule,
        tool_overrides=o.tool_prices or found.tool_overrides,
        source=f"override; else {found.source}",
    )
