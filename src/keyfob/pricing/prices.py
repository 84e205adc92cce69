"""What a model costs: the person's override, else genai-prices' offline snapshot.

Cost rule: price (USD per million tokens) x tokens is exactly micro-USD; the parts are
summed as Decimals and the total is rounded up once (``money.usd_to_micro_ceil``'s rule).

genai-prices' ``calc_price`` resolves the model by matching rules (about 0.5 ms), so the
resolved ``ModelPrice`` is cached per (provider kind, model); flat prices are then computed
here with Decimal arithmetic, and only tiered prices go back through the library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import Any

from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot

from keyfob.pricing.model_limits import ModelLimits, shipped_tool, tool_names
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
    #: Anthropic's one-hour cache writes (2x input; five-minute writes: 1.25x).
    cache_write_1h_per_mtok: Decimal | None = None
    #: The genai-prices catalogue (provider id) the price was found in.
    catalogue: str | None = None
    #: Fees per use of server-side tools, integer micro-USD by tool name (the model's
    #: limits, ``model_limits.py``); a tool missing here costs its shipped price.
    tool_micro_usd: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
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
        fees = self.fees_micro_usd(u.tool_uses) if u.tool_uses else 0
        scaled = self._scaled if not u.cache_write_1h_tokens else None  # 1h writes: rare
        if scaled is not None:
            rin, rout, rread, rwrite = scaled
            cached = u.cache_read_tokens if rread is not None else 0
            written = u.cache_write_tokens if rwrite is not None else 0
            exact = (u.input_tokens - cached - written) * rin + u.output_tokens * rout
            if cached:
                exact += cached * (rread or 0)
            if written:
                exact += written * (rwrite or 0)
            return -(-exact // 1_000_000) + fees
        if self.model_price is not None:
            calc = self.model_price.calc_price(
                Usage(
                    input_tokens=u.input_tokens,
                    output_tokens=u.output_tokens,
                    cache_read_tokens=u.cache_read_tokens or None,
                    cache_write_tokens=u.cache_write_tokens or None,
                    cache_write_1h_tokens=(u.cache_write_1h_tokens or None)
                    if u.cache_write_tokens
                    else None,
                )
            )
            return _ceil_micro(Decimal(calc["total_price"]) * 1_000_000) + fees
        read_rate = self.cache_read_per_mtok
        write_rate = self.cache_write_per_mtok
        cached = u.cache_read_tokens if read_rate is not None else 0
        written = u.cache_write_tokens if write_rate is not None else 0
        plain = u.input_tokens - cached - written
        total = plain * self.input_per_mtok + u.output_tokens * self.output_per_mtok
        if cached:
            total += cached * (read_rate or Decimal(0))
        if written:
            hour = min(u.cache_write_1h_tokens, written) if self.cache_write_1h_per_mtok else 0
            total += (written - hour) * (write_rate or Decimal(0))
            total += hour * (self.cache_write_1h_per_mtok or Decimal(0))
        return _ceil_micro(total) + fees

    def fees_micro_usd(self, tool_uses: dict[str, int]) -> int:
        """What ``tool_uses`` cost in per-use fees (integer micro-USD, exact)."""
        total = 0
        for name, uses in tool_uses.items():
            rate = self.tool_micro_usd.get(name)
            if rate is None:
                try:
                    rate = shipped_tool(name).micro_usd_per_use
                except KeyError:
                    rate = 0  # a tool Keyfob never admits, reported by a stray upstream
            total += rate * uses
        return total

    def with_tool_prices(self, limits: ModelLimits | None) -> Price:
        """This price with the model's own per-use tool fees (a person's limits included)."""
        if limits is None:
            return self
        fees = {name: limits.tool_price(name).micro_usd_per_use for name in tool_names()}
        return replace(self, tool_micro_usd=fees)


def _flat(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    raise TypeError("tiered")


#: The genai-prices catalogue of each built-in provider kind (``openai_compatible`` has
#: none: its catalogue is found from its base URL or the model id).
KIND_CATALOGUE = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "openrouter": "openrouter",
}
#: A usage that weighs every rate, to compare one model's price across catalogues.
_REFERENCE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def _priced(model: str, catalogue: str | None, api_url: str | None = None) -> Any | None:
    """genai-prices' calculation for ``model`` in one catalogue (by id or API URL), or
    the library's own guess when both are None; None when it is not there."""
    try:
        if api_url is not None:
            return calc_price(_REFERENCE, model, provider_api_url=api_url)
        return calc_price(_REFERENCE, model, provider_id=catalogue)
    except LookupError:
        return None


def _lookup(model: str, catalogue: str | None, api_url: str | None) -> Any | None:
    """Where a model's price comes from, most specific first.

    Why across catalogues: an ``openai_compatible`` provider (a proxy, a gateway, a
    self-hosted OpenAI clone) serves models whose prices sit in another provider's
    catalogue, and genai-prices only guesses a catalogue from the model id for some
    families (``text-embedding-3-small`` is found in OpenAI's catalogue, but not without
    naming it). So: the provider kind's own catalogue, the one its base URL belongs to, a
    ``vendor/model`` id's vendor, the library's guess, then every catalogue that lists the
    model id; when those disagree, the highest price, so a cost is never understated."""
    for cat, url in ((catalogue, None), (None, api_url)):
        if cat is not None or url is not None:
            found = _priced(model, cat, url)
            if found is not None:
                return found
    vendor, slash, bare = model.partition("/")
    if slash and bare:
        found = _priced(bare, vendor)
        if found is not None:
            return found
    found = _priced(model, None)
    if found is not None:
        return found
    refs = [model.lower(), bare.lower()] if slash and bare else [model.lower()]
    priced = []
    for p in get_snapshot().providers:
        ref = next((r for r in refs if any(m.is_match(r) for m in p.models)), None)
        found = _priced(ref, p.id) if ref is not None else None
        if found is not None:
            priced.append(found)
    first_party = set(KIND_CATALOGUE.values())  # on a tie, the model maker's own list
    return max(priced, key=lambda c: (c.total_price, c.provider.id in first_party), default=None)


@lru_cache(maxsize=4096)
def _library_price(model: str, catalogue: str | None, api_url: str | None = None) -> Price | None:
    found = _lookup(model, catalogue, api_url)
    if found is None:
        return None
    mp = found.model_price
    try:
        return Price(
            "genai-prices",
            _flat(mp.input_mtok) or Decimal(0),
            _flat(mp.output_mtok) or Decimal(0),
            _flat(mp.cache_read_mtok),
            _flat(getattr(mp, "cache_write_mtok", None)),
            cache_write_1h_per_mtok=_flat(getattr(mp, "cache_write_1h_mtok", None)),
            catalogue=found.provider.id,
        )
    except TypeError:
        return Price("genai-prices", model_price=mp, catalogue=found.provider.id)


def price_for(
    model: str,
    *,
    overrides: dict[str, PriceOverride],
    is_local: bool,
    kind: str | None = None,
    base_url: str | None = None,
) -> Price:
    """The price of ``model``: override first, then free if local, then the snapshot
    (the catalogue of the provider's kind or base URL first, see ``_lookup``)."""
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
    found = _library_price(model, KIND_CATALOGUE.get(kind or ""), base_url or None)
    if found is None:
        raise UnknownPrice(
            f"no price is known for model {model!r}; set one with "
            f"`keyfob providers price PROVIDER {model} --input USD_PER_MTOK --output USD_PER_MTOK`"
        )
    return found
