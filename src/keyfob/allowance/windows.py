"""Spending windows. Calendar windows follow the person's time zone (zoneinfo), so a
"month" is the month the person sees on their own calendar, DST changes included."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class Window:
    key: str
    starts_at: float
    resets_at: float


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def calendar_month(now: float, tz_name: str) -> Window:
    tz = zone(tz_name)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    # re-localise: the first instant of the month may have another UTC offset than now
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    nxt = nxt.replace(tzinfo=None).replace(tzinfo=tz)
    return Window(f"month:{start:%Y-%m}", start.timestamp(), nxt.timestamp())


def window_for(kind: str, now: float, tz_name: str) -> Window:
    if kind == "month":
        return calendar_month(now, tz_name)
    raise ValueError(f"unknown window kind {kind!r}")
