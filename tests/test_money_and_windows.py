"""Money parsing/rounding rules and calendar windows in the person's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyfob.allowance.windows import calendar_month
from keyfob.money import format_usd, parse_usd, usd_to_micro_ceil


def test_parse_usd_is_exact_or_refused() -> None:
    assert parse_usd("5") == 5_000_000
    assert parse_usd("$0.25") == 250_000
    assert parse_usd("0.000001") == 1
    for bad in ("0.0000001", "-1", "abc", "nan", "inf", "1e30"):
        with pytest.raises(ValueError):
            parse_usd(bad)


def test_costs_round_up_to_the_next_micro_dollar() -> None:
    assert usd_to_micro_ceil(Decimal("0.00000675")) == 7
    assert usd_to_micro_ceil(Decimal("0.000007")) == 7
    assert usd_to_micro_ceil(Decimal(0)) == 0


@given(st.integers(min_value=0, max_value=10**12))
def test_format_and_parse_round_trip(micro: int) -> None:
    assert parse_usd(format_usd(micro)) == micro


def ts(y: int, m: int, d: int, h: int = 0, tz: str = "UTC") -> float:
    return datetime(y, m, d, h, tzinfo=ZoneInfo(tz)).timestamp()


def test_month_follows_the_persons_calendar() -> None:
    # 23:30 on 31 October in New York is already November in UTC
    late = ts(2026, 10, 31, 23, "America/New_York")
    assert calendar_month(late, "America/New_York").key == "month:2026-10"
    assert calendar_month(late, "UTC").key == "month:2026-11"


def test_month_spanning_a_dst_change_starts_and_ends_at_local_midnight() -> None:
    w = calendar_month(ts(2026, 3, 15, 12, "Europe/Paris"), "Europe/Paris")
    start = datetime.fromtimestamp(w.starts_at, ZoneInfo("Europe/Paris"))
    end = datetime.fromtimestamp(w.resets_at, ZoneInfo("Europe/Paris"))
    assert (start.day, start.hour, end.month, end.day, end.hour) == (1, 0, 4, 1, 0)
    # March in Paris loses an hour to summer time
    assert w.resets_at - w.starts_at == 31 * 86400 - 3600


def test_december_rolls_into_january_and_unknown_zones_fall_back_to_utc() -> None:
    w = calendar_month(ts(2026, 12, 31, 23), "Not/AZone")
    assert w.key == "month:2026-12"
    assert datetime.fromtimestamp(w.resets_at, UTC) == datetime(2027, 1, 1, tzinfo=UTC)
