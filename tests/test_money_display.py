"""How money reads to a person: two decimals, more only below a cent (issue 14)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keyfob.money import parse_usd, usd_input, usd_precise, usd_summary


def test_summaries_show_two_decimals_and_below_a_cent_as_such() -> None:
    assert usd_summary(0) == "$0.00"
    assert usd_summary(3_000_000) == "$3.00"
    assert usd_summary(2_500_000) == "$2.50"
    assert usd_summary(30) == "< $0.01"
    assert usd_summary(9_999) == "< $0.01"
    assert usd_summary(10_000) == "$0.01"
    assert usd_summary(1_234_567_890) == "$1,234.57"
    assert usd_summary(-2_500_000) == "-$2.50"


def test_call_log_shows_the_digits_a_cheap_call_needs() -> None:
    assert usd_precise(300) == "$0.0003"
    assert usd_precise(30) == "$0.00003"
    assert usd_precise(1) == "$0.000001"
    assert usd_precise(450) == "$0.00045"
    assert usd_precise(250_000) == "$0.25"
    assert usd_precise(0) == "$0.00"


def test_form_values_read_back_exactly() -> None:
    assert usd_input(5_000_000) == "5"
    assert usd_input(2_500_000) == "2.5"
    assert usd_input(0) == "0"


@given(st.integers(min_value=0, max_value=10**15))
def test_input_form_round_trips(micro: int) -> None:
    assert parse_usd(usd_input(micro)) == micro


@given(st.integers(min_value=1, max_value=9_999))
def test_nonzero_below_a_cent_never_reads_as_free(micro: int) -> None:
    assert usd_summary(micro) == "< $0.01"
    assert usd_precise(micro) != "$0.00"
    assert parse_usd(usd_precise(micro).lstrip("$")) == micro
