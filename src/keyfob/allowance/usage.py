"""Usage reports: spend grouped by app, model and day (in the person's time zone), as
rows for tables, JSON and CSV. Shared by ``keyfob usage`` and the usage APIs."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from keyfob.allowance.windows import zone
from keyfob.money import format_usd

GROUPS = ("app", "model", "day")
FIELDS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_micro_usd",
    "to_reconcile",
)


def parse_groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise ValueError(f"group by any of {', '.join(GROUPS)} (comma-separated)")
    return groups


def summarize(
    rows: list[dict[str, Any]], groups: tuple[str, ...], timezone: str = "UTC"
) -> list[dict[str, Any]]:
    """Aggregate ledger rows. Calls still in flight count at their reservation."""
    tz = zone(timezone)
    totals: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for r in rows:
        key_parts: list[Any] = []
        for g in groups:
            if g == "app":
                key_parts.append(r.get("app") or r["client_id"])
            elif g == "model":
                key_parts.append(r["model"])
            else:
                day = datetime.fromtimestamp(r["created_at"], UTC).astimezone(tz).date()
                key_parts.append(day.isoformat())
        acc = totals[tuple(key_parts)]
        acc["calls"] += 1
        for f in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"):
            acc[f] += int(r.get(f) or 0)
        cost = r["cost_micro_usd"] if r["status"] != "reserved" else r["reserved_micro_usd"]
        acc["cost_micro_usd"] += int(cost or 0)
        flagged = r.get("needs_reconciliation") or r["status"] == "reserved"
        acc["to_reconcile"] += 1 if flagged else 0
    out = []
    for key in sorted(totals):
        row: dict[str, Any] = dict(zip(groups, key, strict=True))
        row.update(totals[key])
        row["cost_usd"] = format_usd(row["cost_micro_usd"])
        out.append(row)
    return out


def to_csv(rows: list[dict[str, Any]], groups: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*groups, *FIELDS, "cost_usd"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
