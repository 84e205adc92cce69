"""Money is integer micro-USD everywhere (``*_micro_usd``); Decimal only at the edges.

Rounding rule: a cost computed from a price is rounded *up* to the next micro-dollar
(ROUND_CEILING), so the ledger never understates what a call cost and a reservation
always covers what it settles. Parsing what a person types (``"5"``, ``"0.25"``) is exact
or refused: amounts finer than a micro-dollar are an input error, not something to round.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICRO_PER_USD = 1_000_000


def usd_to_micro_ceil(amount_usd: Decimal) -> int:
    """A computed cost in USD -> micro-USD, rounded up."""
    return int((amount_usd * MICRO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def parse_usd(text: str) -> int:
    """A USD amount a person typed -> micro-USD. Raises ValueError when not exact."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except (InvalidOperation, AttributeError) as exc:
        raise ValueError(f"not an amount in USD: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValueError(f"amount must be a non-negative number: {text!r}")
    micro = value * MICRO_PER_USD
    if micro != micro.to_integral_value():
        raise ValueError(f"amount finer than a micro-dollar: {text!r}")
    if micro > 10**15:
        raise ValueError(f"amount too large: {text!r}")
    return int(micro)


def format_usd(amount_micro_usd: int) -> str:
    """Micro-USD -> a fixed six-decimal string ("0.000450"), for headers and tables."""
    sign = "-" if amount_micro_usd < 0 else ""
    whole, frac = divmod(abs(amount_micro_usd), MICRO_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


_CENT_MICRO = 10_000


def _two_decimals(amount_micro_usd: int) -> str:
    cents = (abs(amount_micro_usd) + _CENT_MICRO // 2) // _CENT_MICRO  # half up, exact
    return f"{cents // 100:,}.{cents % 100:02d}"


def usd_summary(amount_micro_usd: int) -> str:
    """For totals, caps and balances a person reads at a glance: "$1,234.50", "$0.00",
    and "< $0.01" for a spend that is real but below a cent (never "$0.00" for it: that
    would say the app cost nothing)."""
    if amount_micro_usd == 0:
        return "$0.00"
    if 0 < abs(amount_micro_usd) < _CENT_MICRO:
        return "< $0.01" if amount_micro_usd > 0 else "> -$0.01"
    sign = "-" if amount_micro_usd < 0 else ""
    return f"{sign}${_two_decimals(amount_micro_usd)}"


def usd_precise(amount_micro_usd: int) -> str:
    """For one call's cost in a call log: two decimals from a cent up ("$0.25"), and
    below a cent as many decimals as the amount needs, up to the micro-dollar ("$0.0003",
    "$0.000045"), so a cheap call is never shown as free."""
    if amount_micro_usd == 0:
        return "$0.00"
    sign = "-" if amount_micro_usd < 0 else ""
    micro = abs(amount_micro_usd)
    if micro >= _CENT_MICRO:
        return f"{sign}${_two_decimals(micro)}"
    return f"{sign}$0.{micro:06d}".rstrip("0")


def usd_input(amount_micro_usd: int) -> str:
    """An amount as a person would type it back into a form: "5", "2.5", "0.000001"."""
    text = format_usd(amount_micro_usd)
    return text.rstrip("0").rstrip(".") if "." in text else text
