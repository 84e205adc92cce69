"""Server-rendered SVG charts: no script, no CDN, nothing the strict CSP has to allow.

A stacked bar per day (one colour per app or model) scales with the page (``viewBox``,
width 100%), so it never overflows a phone. The chart is an image with a text title for
screen readers; the figures themselves are also in a table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

from keyfob.money import usd_summary
from keyfob.store.reports import DailySeries

#: Distinct hues with at least 3:1 contrast against both the light and the dark page.
PALETTE = ("#3d6fe0", "#d0661e", "#2f8f3a", "#a040c0", "#0f8f9a", "#c8345f", "#8a6a2a")
OTHER_COLOUR = "#7b8794"
MAX_SERIES = len(PALETTE)

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 8, 8, 22, 26


@dataclass(frozen=True)
class Legend:
    key: str
    colour: str
    total_micro_usd: int


def legend(series: DailySeries) -> list[Legend]:
    """The keys drawn, biggest first; beyond the palette they are summed as "other"."""
    shown = series.keys[:MAX_SERIES]
    out = [Legend(k, PALETTE[i], series.total(k)) for i, k in enumerate(shown)]
    rest = series.keys[MAX_SERIES:]
    if rest:
        out.append(Legend("other", OTHER_COLOUR, sum(series.total(k) for k in rest)))
    return out


def _label(d: date) -> str:
    return f"{d:%b} {d.day}"


def stacked_bars(series: DailySeries, title: str) -> Markup:
    """An SVG of spend per day, stacked by key, with the busiest day's total marked."""
    keys = legend(series)
    colour = {lg.key: lg.colour for lg in keys}
    n = max(1, len(series.days))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.72)
    top = max((series.day_total(d) for d in series.days), default=0)
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="15" fill="currentColor">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        f'stroke="currentColor" stroke-width="1"/>',
    ]
    if top > 0:
        parts.append(
            f'<text x="{LEFT}" y="{TOP - 8}">busiest day {escape(usd_summary(top))}</text>'
        )
        for i, d in enumerate(series.days):
            y = float(TOP + plot_h)
            x = LEFT + i * slot + (slot - bar_w) / 2
            stack: dict[str, int] = {}
            for k in series.keys:
                v = series.values.get((d, k), 0)
                if v:
                    shown = k if k in colour else "other"
                    stack[shown] = stack.get(shown, 0) + v
            for k, v in stack.items():
                h = plot_h * v / top
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                    f'fill="{colour[k]}"><title>{escape(_label(d))}: {escape(k)} '
                    f"{escape(usd_summary(v))}</title></rect>"
                )
    else:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{TOP + plot_h / 2}" text-anchor="middle">'
            "No spend in this range</text>"
        )
    ticks = sorted({0, n // 2, n - 1}) if n > 1 else [0]
    for i in ticks:
        anchor = "start" if i == 0 else ("end" if i == n - 1 and n > 1 else "middle")
        x = LEFT + i * slot + (slot / 2 if anchor == "middle" else 0)
        if anchor == "end":
            x = LEFT + (i + 1) * slot
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
            f"{escape(_label(series.days[i]))}</text>"
            if series.days
            else ""
        )
    parts.append("</svg>")
    # every piece of text above went through escape(); the rest is numbers and constants
    return Markup("".join(parts))  # noqa: S704
