"""Spending windows. Calendar windows follow the person's time zone (zoneinfo), so a
"month" is the month the person sees on their own calendar, DST changes included; a
"week" starts on Monday. Rolling windows have no key: they are the last N seconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


def _local_midnight(d: datetime, tz: ZoneInfo) -> datetime:
    """Midnight of ``d``'s date in ``tz``, with the offset in force at that instant."""
    return datetime(d.year, d.month, d.day, tzinfo=tz)


def calendar_month(now: float, tz_name: str) -> Window:
    tz = zone(tz_name)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    start = _local_midnight(local.replace(day=1), tz)
    nxt = (
        datetime(start.year + 1, 1, 1, tzinfo=tz)
        if start.month == 12
        else datetime(start.year, start.month + 1, 1, tzinfo=tz)
    )
    return Window(f"month:{start:%Y-%m}", start.timestamp(), nxt.timestamp())


def calendar_week(now: float, tz_name: str) -> Window:
    tz = zone(tz_name)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    monday = (local - timedelta(days=local.weekday())).date()
    start = datetime(monday.year, monday.month, monday.day, tzinfo=tz)
    nxt_day = monday + timedelta(days=7)
    nxt = datetime(nxt_day.year, nxt_day.month, nxt_day.day, tzinfo=tz)
    iso = monday.isocalendar()
    return Window(f"week:{iso.year}-W{iso.week:02d}", start.timestamp(), nxt.timestamp())


def calendar_day(now: float, tz_name: str) -> Window:
    tz = zone(tz_name)
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    start = _local_midnight(local, tz)
    nxt_day = local.date() + timedelta(days=1)
    nxt = datetime(nxt_day.year, nxt_day.month, nxt_day.day, tzinfo=tz)
    return Window(f"day:{local:%Y-%m-%d}", start.timestamp(), nxt.timestamp())


def rolling(now: float, seconds: int) -> Window:
    return Window(f"rolling:{seconds}", now - seconds, now + seconds)


def window_for(kind: str, now: float, tz_name: str) -> Window:
    if kind == "month":
        return calendar_month(now, tz_name)
    if kind == "week":
        return calendar_week(now, tz_name)
    if kind == "day":
        return calendar_day(now, tz_name)
    raise ValueError(f"unknown window kind {kind!r}")
