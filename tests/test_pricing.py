"""Prices, worst-case bounds and exact costs, in integer micro-USD (rounded up once)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyfob.gateway.estimate import count, estimate
from keyfob.pricing.bounds import chat_input_bound, chat_output_bound
from keyfob.pricing.model_limits import limits_for
from keyfob.pricing.prices import UnknownPrice, price_for
from keyfob.pricing.usage import TokenUsage
from keyfob.store.records import PriceOverride


def test_gpt4o_mini_cost_rounds_up() -> None:
    price = price_for("gpt-4o-mini", overrides={}, is_local=False)
    # 1 x 0.15 + 11 x 0.60 = 6.75 micro-USD -> 7
    assert price.cost_micro_usd(TokenUsage(1, 11)) == 7
    assert price.cost_micro_usd(TokenUsage(0, 0)) == 0
    assert price.cost_micro_usd(TokenUsage(1_000_000, 0)) == 150_000


def test_cached_input_tokens_are_cheaper() -> None:
    price = price_for("gpt-4o-mini", overrides={}, is_local=False)
    full = price.cost_micro_usd(TokenUsage(1_000_000, 0))
    cached = price.cost_micro_usd(TokenUsage(1_000_000, 0, cache_read_tokens=1_000_000))
    assert cached < full
    assert cached == 75_000


def test_override_wins_and_local_is_free() -> None:
    o = {"gpt-4o-mini": PriceOverride(1_000_000, 2_000_000, None)}  # $1 / $2 per MTok
    price = price_for("gpt-4o-mini", overrides=o, is_local=False)
    assert price.source == "override"
    assert price.cost_micro_usd(TokenUsage(3, 5)) == 13
    local = price_for("gemma3-270m", overrides={}, is_local=True)
    assert local.cost_micro_usd(TokenUsage(10_000, 10_000)) == 0


def test_unknown_model_is_refused_with_a_hint() -> None:
    with pytest.raises(UnknownPrice, match="keyfob providers price"):
        price_for("no-such-model-xyz-123", overrides={}, is_local=False)


def test_usage_from_openai() -> None:
    u = TokenUsage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    )
    assert u == TokenUsage(10, 5, cache_read_tokens=4, reasoning_tokens=2)
    assert TokenUsage.from_openai({"prompt_tokens": "x"}) is None
    assert TokenUsage.from_openai({"prompt_tokens": -1}) is None


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_output_bound_uses_max_tokens_times_n() -> None:
    assert chat_output_bound(_body("x", max_tokens=7, n=3), default_max_output_tokens=99) == 21
    assert chat_output_bound(_body("x", max_completion_tokens=5), default_max_output_tokens=99) == 5
    assert chat_output_bound(_body("x"), default_max_output_tokens=99) == 99


def test_image_parts_get_their_bound() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 10},
                    },
                ],
            }
        ]
    }
    # An unreadable image (and a URL one) is bounded by the most its model's rule bills.
    gpt4o = limits_for("openai", "gpt-4o")
    assert chat_input_bound(body, model="gpt-4o", limits=gpt4o) >= 85 + 8 * 170 + 2


@settings(deadline=None)  # the first call loads the encoder
@given(st.text(max_size=400))
def test_byte_bound_covers_the_tokenizer(text: str) -> None:
    """The reservation's input bound is never below a real tokenizer's count."""
    body = _body(text)
    assert chat_input_bound(body) >= estimate(body, "").input_tokens
    assert count(text) <= len(text.encode("utf-8"))


def test_estimate_counts_cl100k_tokens() -> None:
    assert count("Hi there! This is a mock response from fakellm.") == 14
    u = estimate(_body("hello"), "Hi")
    assert u.output_tokens == 1 and u.input_tokens >= 1


@given(
    rates=st.lists(st.tuples(st.integers(0, 10**8), st.integers(0, 8)), min_size=4, max_size=4),
    cached_rate=st.booleans(),
    written_rate=st.booleans(),
    tokens=st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)),
    split=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_integer_cost_path_equals_the_decimal_one(
    rates: list[tuple[int, int]],
    cached_rate: bool,
    written_rate: bool,
    tokens: tuple[int, int],
    split: tuple[float, float],
) -> None:
    """The fast path (rates scaled to integers) must give exactly the Decimal result,
    and step aside for rates finer than 10^-6."""
    from decimal import Decimal

    from keyfob.pricing.prices import Price
    from keyfob.pricing.usage import TokenUsage

    r = [Decimal(m) / (Decimal(10) ** e) for m, e in rates]
    price = Price(
        "override", r[0], r[1], r[2] if cached_rate else None, r[3] if written_rate else None
    )
    inp, out = tokens
    cached = int(inp * split[0])
    written = int((inp - cached) * split[1])
    usage = TokenUsage(inp, out, cached, written, 0)
    fast = price.cost_micro_usd(usage)
    object.__setattr__(price, "_scaled", None)
    assert fast == price.cost_micro_usd(usage)


# --- prices across catalogues (issue 15) ---------------------------------------------------


def test_openai_compatible_finds_a_model_in_another_catalogue() -> None:
    """genai-prices finds ``text-embedding-3-small`` only when told the catalogue: an
    OpenAI-compatible proxy serving it must still get its price, not a 400."""
    for base_url in ("http://127.0.0.1:9999/v1", ""):
        p = price_for(
            "text-embedding-3-small",
            overrides={},
            is_local=False,
            kind="openai_compatible",
            base_url=base_url,
        )
        assert (p.source, p.catalogue) == ("genai-prices", "openai")
        assert p.cost_micro_usd(TokenUsage(1_000_000, 0)) == 20_000  # $0.02 per MTok


def test_catalogue_of_the_kind_the_base_url_and_a_vendor_prefix() -> None:
    kinds = price_for("gpt-4o-mini", overrides={}, is_local=False, kind="openai")
    assert kinds.catalogue == "openai"
    groq = price_for(
        "llama-3.1-8b-instant",
        overrides={},
        is_local=False,
        kind="openai_compatible",
        base_url="https://api.groq.com/openai/v1",
    )
    assert groq.catalogue == "groq"
    vendor = price_for(
        "openai/text-embedding-3-large", overrides={}, is_local=False, kind="openai_compatible"
    )
    assert vendor.catalogue == "openai" and vendor.input_per_mtok > 0
    with pytest.raises(UnknownPrice):
        price_for("nobody/no-such-model-xyz", overrides={}, is_local=False, kind="openai")


def test_catalogues_that_disagree_give_the_higher_price() -> None:
    """When only a scan of every catalogue finds a model, and they price it differently,
    the higher price is taken: a cost is never understated."""
    from genai_prices.data_snapshot import get_snapshot

    from keyfob.pricing.prices import _priced

    snap = get_snapshot()
    chosen = price_for("text-embedding-3-small", overrides={}, is_local=False)
    listed = [
        _priced("text-embedding-3-small", p.id)
        for p in snap.providers
        if any(m.is_match("text-embedding-3-small") for m in p.models)
    ]
    assert len(listed) >= 2
    highest = max(c.total_price for c in listed if c is not None)
    assert chosen.cost_micro_usd(TokenUsage(10**6, 10**6)) == int(highest * 10**6)
