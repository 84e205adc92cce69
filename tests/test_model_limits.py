"""Shipped model limits: context windows, output maxima, image rules, tool prices."""

from __future__ import annotations

import tomllib
from datetime import date
from importlib.resources import files

import pytest

from keyfob.pricing.model_limits import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    LimitOverride,
    family_image_rule,
    image_rule_names,
    limits_for,
    normalize,
)


def _raw() -> dict:
    return tomllib.loads(files("keyfob.pricing").joinpath("model_limits.toml").read_text())


def test_data_is_dated_and_every_entry_has_a_known_source() -> None:
    raw = _raw()
    date.fromisoformat(raw["as_of"])
    sources = raw["sources"]
    for m in raw["models"]:
        assert m["source"] in sources, m["names"]
        assert m["context"] > 0
        assert m.get("max_output", 1) <= m["context"], m["names"]
    for name, rule in raw["image_rules"].items():
        assert rule["source"] in sources, name
    for name, tool in raw["tools"].items():
        assert tool["source"] in sources, name
        assert isinstance(tool["micro_usd_per_use"], int)


@pytest.mark.parametrize(
    ("kind", "model", "context", "max_output"),
    [
        ("openai", "gpt-4o-mini", 128_000, 16_384),
        ("openai", "gpt-4o-mini-2024-07-18", 128_000, 16_384),
        ("openrouter", "openai/gpt-4o-mini", 128_000, 16_384),
        ("openai", "gpt-4o", 128_000, 16_384),
        ("openai", "gpt-4.1-nano", 1_047_576, 32_768),
        ("openai", "o3-mini", 200_000, 100_000),
        ("openai", "gpt-5", 400_000, 128_000),
        ("anthropic", "claude-3-5-haiku-20241022", 200_000, 8_192),
        ("openrouter", "anthropic/claude-3.5-sonnet", 200_000, 8_192),
        ("anthropic", "claude-sonnet-4-5-20250929", 1_000_000, 64_000),
        ("anthropic", "claude-opus-4-1", 200_000, 32_000),
        ("gemini", "gemini-2.5-flash", 1_048_576, 65_536),
        ("gemini", "models/gemini-2.0-flash-001", 1_048_576, 8_192),
        ("openai_compatible", "deepseek-reasoner", 128_000, 65_536),
    ],
)
def test_shipped_limits(kind: str, model: str, context: int, max_output: int) -> None:
    limits = limits_for(kind, model)
    assert limits is not None
    assert (limits.context_window_tokens, limits.max_output_tokens) == (context, max_output)
    assert limits.max_output_known
    assert limits.as_of == _raw()["as_of"]
    assert limits.source.startswith("shipped")


def test_a_longer_name_wins_and_a_version_is_not_a_suffix() -> None:
    assert limits_for("openai", "gpt-4o-mini").image().name == "openai-tiles-2833-5667"  # type: ignore[union-attr]
    assert limits_for("openai", "gpt-4o").image().name == "openai-tiles-85-170"  # type: ignore[union-attr]
    # "gpt-4.5-preview" is not "gpt-4" with a suffix: an 8k window would be unsafe.
    assert limits_for("openai", "gpt-4.5-preview").context_window_tokens == 128_000  # type: ignore[union-attr]
    assert normalize("anthropic/Claude-3.5-Sonnet") == "claude-3-5-sonnet"


def test_genai_prices_fills_in_and_the_larger_window_wins() -> None:
    # Known to genai-prices only: its context window, the default output maximum.
    only_genai = limits_for("openai", "gpt-5.4-mini")
    assert only_genai is not None and only_genai.context_window_tokens == 400_000
    assert not only_genai.max_output_known
    assert only_genai.max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS
    # Listed at 128k here, 262k in genai-prices for this release: the larger bounds.
    newer = limits_for("openai_compatible", "mistral-large-2512")
    assert newer is not None and newer.context_window_tokens == 262_144


def test_unknown_model_has_no_limits_until_the_person_sets_them() -> None:
    assert limits_for("openai_compatible", "my-finetune") is None
    over = {"my-finetune": LimitOverride(context_window_tokens=32_000)}
    limits = limits_for("openai_compatible", "my-finetune", over)
    assert limits is not None and limits.context_window_tokens == 32_000
    assert limits.max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS and limits.source == "override"


def test_overrides_win_field_by_field() -> None:
    over = {"gpt-4o-mini": LimitOverride(max_output_tokens=1000, image_rule="openai-tiles-85-170")}
    limits = limits_for("openai", "gpt-4o-mini", over)
    assert limits is not None
    assert (limits.context_window_tokens, limits.max_output_tokens) == (128_000, 1000)
    assert limits.image().name == "openai-tiles-85-170"
    assert limits.source.startswith("override")
    assert "openai-tiles-85-170" in image_rule_names()


def test_tool_prices_take_the_larger_of_shipped_and_per_model() -> None:
    claude = limits_for("anthropic", "claude-sonnet-4-5")
    assert claude is not None
    assert claude.tool_price("anthropic-web-search").micro_usd_per_use == 10_000
    assert claude.tool_price("anthropic-web-fetch").micro_usd_per_use == 0
    gemini = limits_for("gemini", "gemini-2.5-flash")
    assert gemini is not None
    assert gemini.tool_price("gemini-google-search").micro_usd_per_use == 35_000


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "tokens"),
    [
        # OpenAI's own worked examples (images and vision guide).
        ("gpt-4o", 1024, 1024, "high", 765),
        ("gpt-4o", 2048, 4096, "high", 1105),
        ("gpt-4o", 4096, 8192, "low", 85),
        ("gpt-4o-mini", 1024, 1024, "high", 25_501),
        ("gpt-4.1-mini", 1024, 1024, None, 1_659),
        ("gpt-4.1-mini", 1800, 2400, None, 2_489),
        ("claude-3-5-sonnet", 1000, 1000, None, 1_334),
        ("claude-3-5-sonnet", 200, 200, None, 54),
        ("gemini-2.0-flash", 300, 300, None, 258),
        ("gemini-2.0-flash", 1000, 1000, None, 1_032),
    ],
)
def test_image_rules(model: str, width: int, height: int, detail: str | None, tokens: int) -> None:
    limits = limits_for("openai", model)
    assert limits is not None
    assert limits.image().tokens(width, height, detail) == tokens
    assert limits.image().max_tokens(detail) >= tokens


def test_url_images_are_bounded_by_the_worst_image() -> None:
    assert limits_for("openai", "gpt-4o-mini").image().max_tokens("high") == 2833 + 8 * 5667  # type: ignore[union-attr]
    assert limits_for("anthropic", "claude-haiku-4-5").image().max_tokens() == 1600  # type: ignore[union-attr]
    # A model of no known family: the largest of several rules.
    assert family_image_rule("some-vision-model").max_tokens() == 16_384


def test_a_persons_tool_price_wins_over_shipped_and_per_model() -> None:
    own = {"claude-sonnet-4-5": LimitOverride(tool_prices=(("anthropic-web-search", 2_500),))}
    claude = limits_for("anthropic", "claude-sonnet-4-5", own)
    assert claude is not None
    price = claude.tool_price("anthropic-web-search")
    assert (price.micro_usd_per_use, price.source) == (2_500, "override")
    assert claude.tool_price("anthropic-web-fetch").micro_usd_per_use == 0  # the others stay
    # a model known only through the person's limits carries them too
    mine = {"my-model": LimitOverride(8_000, tool_prices=(("openai-web-search", 0),))}
    limits = limits_for("openai_compatible", "my-model", mine)
    assert limits is not None and limits.tool_price("openai-web-search").micro_usd_per_use == 0
