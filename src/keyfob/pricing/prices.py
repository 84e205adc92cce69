"""What a model costs: the person's override, else genai-prices' offline snapshot.

Cost rule: price (USD per million tokens) x tokens is exactly micro-USD; the parts are
summed as Decimals and the total is rounded up once (``money.usd_to_micro_ceil``'s rule).

genai-prices' ``calc_price`` resolves the model by matching rules (about 0.5 ms), so the
resolved ``ModelPrice`` is cached per (provider kind, model); flat prices are then computed
here with Decimal arithmetic, and only tiered prices go back through the library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import Any

from genai_prices import Usage, calc_price

from keyfob.pricing.usage import TokenUsage
from keyfob.store.records import PriceOverride


class UnknownPrice(LookupError):
    """No price is known for a model, so a call to it cannot be bounded."""


def _scale(rate: Decimal) -> int | None:
    scaled = rate * 1_000_000
    return int(scaled) if scaled == scaled.to_integral_value() else None


def _scaled_rates(p: Price) -> tuple[int, int, int | None, int | None] | None:
    """``p``'s rates x 10^6 as integers, or None when one is not exact (or tiered)."""
    if p.model_price is not None:
        return None
    rin, rout = _scale(p.input_per_mtok), _scale(p.output_per_mtok)
    rread = _scale(p.cache_read_per_mtok) if p.cache_read_per_mtok is not None else None
    rwrite = _scale(p.cache_write_per_mtok) if p.cache_write_per_mtok is not None else None
    if rin is None or rout is None:
        return None
    if p.cache_read_per_mtok is not None and rread is None:
        return None
    if p.cache_write_per_mtok is not None and rwrite is None:
        return None
    return rin, rout, rread, rwrite


def _ceil_micro(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class Price:
    """A model's price: a person's override, a library snapshot entry, or free (local)."""

    source: str  # "override" | "genai-prices" | "local"
    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    model_price: Any = None  # genai_prices ModelPrice, when tiered
    #: The four rates x 10^6 as integers, when all are exact at that scale (None: not).
    _scaled: tuple[int, int, int | None, int | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_scaled", _scaled_rates(self))

    def cost_micro_usd(self, u: TokenUsage) -> int:
        """What ``u`` costs, rounded up to the micro-dollar.

        A rate per million tokens in USD is a rate per token in micro-USD. When every rate
        has at most six decimals (all of genai-prices' and any a person types), the sum
        is computed on integers scaled by 10^6 and rounded up once: the same exact result
        as the Decimal path, at a tenth of the cost (it runs twice per call)."""
        scaled = self._scaled
        if scaled is not None:
            rin, rout, rread, rwrite = scaled
            cached = u.cache_read_tokens if rread is not None else 0
            written = u.cache_write_tokens if rwrite is not None else 0
            exact = (u.input_tokens - cached - written) * rin + u.output_tokens * rout
            if cached:
                exact += cached * (rread or 0)
            if written:
                exact += written * (rwrite or 0)
            return -(-exact // 1_000_000)
        if self.model_price is not None:
            calc = self.model_price.calc_price(
                Usage(
                    input_tokens=u.input_tokens,
                    output_tokens=u.output_tokens,
                    cache_read_tokens=u.cache_read_tokens or None,
                    cache_write_tokens=u.cache_write_tokens or None,
                )
            )
            return _ceil_micro(Decimal(calc["total_price"]) * 1_000_000)
        read_rate = self.cache_read_per_mtok
        write_rate = self.cache_write_per_mtok
        cached = u.cache_read_tokens if read_rate is not None else 0
        written = u.cache_write_tokens if write_rate is not None else 0
        plain = u.input_tokens - cached - written
        total = plain * self.input_per_mtok + u.output_tokens * self.output_per_mtok
        if cached:
            total += cached * (read_rate or Decimal(0))
        if written:
            total += written * (write_rate or Decimal(0))
        return _ceil_micro(total)


def _flat(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    raise TypeError("tiered")


@lru_cache(maxsize=4096)
def _library_price(model: str, provider_hint: str | None) -> Price | None:
    try:
        found = calc_price(Usage(input_tokens=0, output_tokens=0), model, provider_id=provider_hint)
    except LookupError:
        if provider_hint is None:
            return None
        return _library_price(model, None)
    mp = found.model_price
    try:
        return Price(
            "genai-prices",
            _flat(mp.input_mtok) or Decimal(0),
            _flat(mp.output_mtok) or Decimal(0),
            _flat(mp.cache_read_mtok),
            _flat(getattr(mp, "cache_write_mtok", None)),
        )
    except TypeError:
        return Price("genai-prices", model_price=mp)


def price_for(
    model: str,
    *,
    overrides: dict[str, PriceOverride],
    is_local: bool,
    provider_hint: str | None = None,
) -> Price:
    """The price of ``model``: override first, then the snapshot, then free if local."""
    o = overrides.get(model)
    if o is not None:
        cached = o.cached_input_micro_usd_per_mtok
        million = Decimal(1_000_000)
        return Price(
            "override",
            Decimal(o.input_micro_usd_per_mtok) / million,
            Decimal(o.output_micro_usd_per_mtok) / million,
            Decimal(cached) / million if cached is not None else None,
        )
    if is_local:
        return Price("local")
    found = _library_price(model, provider_hint)
    if found is None:
        raise UnknownPrice(
            f"no price is known for model {model!r}; set one with "
            f"`keyfob providers price PROVIDER {model} --input USD_PER_MTOK --output USD_PER_MTOK`"
        )
    return found
