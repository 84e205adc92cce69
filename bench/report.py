"""Turning raw measurements into the side-by-side table, the verdicts and the files.

Why ratios: the machine is shared and noisy, so an absolute millisecond means little from
one day to the next, but Keyfob against an anchor measured minutes apart in the same run
does. Every figure is printed next to its anchor, and each target is PASS or MISS on a
ratio. Added latency is a target's percentile minus nginx-direct's same percentile.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ORDER = ["direct", "bare", "keyfob", "keyfob-hosted", "litellm", "portkey", "tensorzero"]
#: how each target is named in the targets table
LABEL = {
    "bare": "bare proxy",
    "keyfob": "personal",
    "keyfob-hosted": "hosted",
    "litellm": "LiteLLM",
    "portkey": "Portkey",
    "tensorzero": "TensorZero",
}
DOCS_START = "<!-- bench:results:start -->"
DOCS_END = "<!-- bench:results:end -->"


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def cells(runs: list[dict[str, Any]]) -> dict[tuple[str, int, bool], dict[str, float]]:
    """Median over rounds of each (target, connections, stream) cell."""
    grouped: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for r in runs:
        grouped.setdefault((r["target"], r["connections"], r["stream"]), []).append(r)
    out = {}
    for key, rs in grouped.items():
        out[key] = {
            k: median([float(r.get(k, math.nan)) for r in rs])
            for k in (
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "rps",
                "cpu_ms_per_call",
                "db_cpu_ms_per_call",
                "total_cpu_ms_per_call",
            )
        }
        out[key]["error_rate"] = max(float(r["error_rate"]) for r in rs)
    return out


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Derived figures per target: added latency, max rps at <= 1% errors, RSS growth."""
    c = cells(raw["wrk"])
    conns = sorted({k[1] for k in c})
    summary: dict[str, Any] = {}
    for name in raw["targets"]:
        s: dict[str, Any] = {}
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            ok = [
                c[(name, n, stream)]["rps"]
                for n in conns
                if (name, n, stream) in c and c[(name, n, stream)]["error_rate"] <= 0.01
            ]
            if ok:
                s[f"{kind}_max_rps"] = max(ok)
            elif any((name, n, stream) in c for n in conns):
                s[f"{kind}_max_rps"] = 0.0  # measured, but every cell had errors
            for n in conns:
                cell = c.get((name, n, stream))
                base = c.get(("direct", n, stream))
                if cell is None:
                    continue
                s[f"{kind}_c{n}"] = cell
                if base is not None:
                    s[f"{kind}_c{n}_added"] = {
                        p: cell[f"{p}_ms"] - base[f"{p}_ms"] for p in ("p50", "p90", "p99")
                    }
        st, dt = raw["stream_timing"].get(name), raw["stream_timing"].get("direct")
        if st and dt:
            s["stream_first_added"] = {
                p: st[f"first_{p}_ms"] - dt[f"first_{p}_ms"] for p in ("p50", "p90", "p99")
            }
            s["stream_total_added"] = {
                p: st[f"total_{p}_ms"] - dt[f"total_{p}_ms"] for p in ("p50", "p90", "p99")
            }
        mem = raw["memory"].get(name, {})
        small, large = mem.get("rss_small_kb"), mem.get("rss_large_kb")
        if small and large:
            s["rss_growth"] = (large - small) / small
        summary[name] = s
    return summary


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def verdicts(raw: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets: (figure, Keyfob, anchor, ratio, target, PASS/MISS), each a
    ratio of two targets measured in the same run. A target missing from the run gives
    ``n/a`` rows, so the table always has the same shape."""

    def get(name: str, what: str) -> float | None:
        s = summary.get(name, {})
        if what == "p50":
            value = s.get("chat_c1_added", {}).get("p50")
        elif what == "rps":
            value = s.get("chat_max_rps")
        elif what == "cpu":
            # Keyfob's process plus, in hosted mode, PostgreSQL's work for its database
            cell = s.get("chat_c10", {})
            value = cell.get("total_cpu_ms_per_call", cell.get("cpu_ms_per_call"))
        else:
            raise KeyError(what)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == 0:
            return None
        return float(value)

    rows: list[dict[str, Any]] = []

    def row(
        figure: str,
        who: str,
        mine: float | None,
        anchor_name: str,
        anchor: float | None,
        value: float,
        op: str,
        goal: float,
        unit: str,
    ) -> None:
        checks = {"<=": value <= goal, ">=": value >= goal, "<": value < goal}
        verdict = "n/a" if math.isnan(value) else ("PASS" if checks[op] else "MISS")
        rows.append(
            {
                "figure": figure,
                "who": who,
                "keyfob": mine,
                "anchor_name": anchor_name,
                "anchor": anchor,
                "ratio": value,
                "target": f"{op} {100 * goal:g}%" if unit == "fraction" else f"{op} {goal:g}",
                "unit": unit,
                "verdict": verdict,
            }
        )

    figures = {
        "p50": "added p50 latency, c=1 (ms)",
        "rps": "max requests/s at <= 1% errors",
        "cpu": "CPU ms per chat call, c=10",
    }

    def ratio_row(mine: str, what: str, anchor: str, op: str, goal: float) -> None:
        a, b = get(mine, what), get(anchor, what)
        row(figures[what], LABEL[mine], a, LABEL[anchor], b, _ratio(a, b), op, goal, what)

    # issue 6: personal mode against the floor and LiteLLM
    ratio_row("keyfob", "p50", "bare", "<=", 1.5)
    ratio_row("keyfob", "p50", "litellm", "<=", 0.05)
    ratio_row("keyfob", "rps", "bare", ">=", 0.6)
    ratio_row("keyfob", "rps", "litellm", ">=", 20)
    # issue 13: one hosted process against personal mode
    ratio_row("keyfob-hosted", "rps", "keyfob", ">=", 0.5)
    ratio_row("keyfob-hosted", "p50", "keyfob", "<=", 2.0)
    ratio_row("keyfob-hosted", "cpu", "keyfob", "<=", 2.0)
    # issue 13: the other gateways people pick (ratios chosen before the first run)
    ratio_row("keyfob", "p50", "portkey", "<=", 1.0)
    ratio_row("keyfob-hosted", "p50", "portkey", "<=", 1.0)
    ratio_row("keyfob", "rps", "portkey", ">=", 1.0)
    ratio_row("keyfob-hosted", "rps", "portkey", ">=", 0.5)
    ratio_row("keyfob-hosted", "p50", "litellm", "<=", 0.2)
    ratio_row("keyfob-hosted", "rps", "litellm", ">=", 5)
    ratio_row("keyfob", "p50", "tensorzero", "<=", 2.0)
    ratio_row("keyfob-hosted", "p50", "tensorzero", "<=", 4.0)
    ratio_row("keyfob", "rps", "tensorzero", ">=", 0.5)
    mem = raw["memory"]
    growth = summary.get("keyfob", {}).get("rss_growth")
    row(
        f"RSS growth {mem.get('calls_small', '?')} -> {mem.get('calls_large', '?')} calls",
        "personal",
        growth,
        "bare proxy",
        summary.get("bare", {}).get("rss_growth"),
        growth if growth is not None else math.nan,
        "<",
        0.10,
        "fraction",
    )
    hgrowth = summary.get("keyfob-hosted", {}).get("rss_growth")
    row(
        f"RSS growth {mem.get('calls_small', '?')} -> {mem.get('calls_large', '?')} calls",
        "hosted",
        hgrowth,
        "bare proxy",
        summary.get("bare", {}).get("rss_growth"),
        hgrowth if hgrowth is not None else math.nan,
        "<",
        0.10,
        "fraction",
    )
    for name in ("keyfob", "keyfob-hosted"):
        ref = (
            (raw.get("refresh_by") or {}).get(name)
            or (raw.get("refresh") if name == "keyfob" else None)
            or {}
        )
        per_core = ref.get("grants_per_cpu_s")
        row(
            "refresh grants / s per core",
            LABEL[name],
            per_core,
            "Keycloak (documented)",
            120.0,
            per_core if per_core is not None else math.nan,
            ">=",
            1000,
            "grants/s",
        )
    return rows


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.{digits}f}%"


def targets_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        fmt = _pct if r["unit"] == "fraction" else _f
        ratio = r["ratio"] if r["unit"] != "fraction" else None
        body.append(
            [
                r["figure"],
                r.get("who", "personal"),
                fmt(r["keyfob"]),
                f"{fmt(r['anchor'])} ({r['anchor_name']})",
                _f(ratio, 3) if ratio is not None else fmt(r["ratio"]),
                r["target"],
                f"**{r['verdict']}**",
            ]
        )
    return _table(
        ["figure", "Keyfob", "value", "anchor (same run)", "ratio / value", "target", "verdict"],
        body,
    )


def detail_table(raw: dict[str, Any], summary: dict[str, Any]) -> str:
    names = [n for n in ORDER if n in raw["targets"]]
    conns = sorted({r["connections"] for r in raw["wrk"]})
    rows: list[list[str]] = []

    def add(label: str, get: Any) -> None:
        vals = []
        for n in names:
            try:
                vals.append(_f(get(n)))
            except (KeyError, TypeError):
                vals.append("-")
        rows.append([label, *vals])

    for kind, title in (("chat", "chat"), ("stream", "stream (wrk, whole response)")):
        for n in conns:
            add(
                f"{title} c={n}: p50 / p99 ms",
                lambda t, k=kind, n=n: (
                    f"{summary[t][f'{k}_c{n}']['p50_ms']:.2f} / "
                    f"{summary[t][f'{k}_c{n}']['p99_ms']:.2f}"
                ),
            )
            add(
                f"{title} c={n}: added p50 / p90 / p99 ms",
                lambda t, k=kind, n=n: "{p50:.2f} / {p90:.2f} / {p99:.2f}".format(
                    **summary[t][f"{k}_c{n}_added"]
                ),
            )
            add(f"{title} c={n}: requests/s", lambda t, k=kind, n=n: summary[t][f"{k}_c{n}"]["rps"])
        add(
            f"{title}: max requests/s at <= 1% errors", lambda t, k=kind: summary[t][f"{k}_max_rps"]
        )
        add(
            f"{title}: CPU ms per call (c=10)",
            lambda t, k=kind: summary[t][f"{k}_c10"]["cpu_ms_per_call"] if t != "direct" else None,
        )
        add(
            f"{title}: + PostgreSQL CPU ms per call (c=10)",
            lambda t, k=kind: (
                summary[t][f"{k}_c10"]["db_cpu_ms_per_call"] if t == "keyfob-hosted" else None
            ),
        )
    add(
        "stream c=1 first byte: added p50 / p99 ms",
        lambda t: "{p50:.2f} / {p99:.2f}".format(**summary[t]["stream_first_added"]),
    )
    add(
        "stream c=1 total: added p50 / p99 ms",
        lambda t: "{p50:.2f} / {p99:.2f}".format(**summary[t]["stream_total_added"]),
    )
    fr: dict[str, dict[str, Any]] = raw.get("fixed_rate", {})
    rate = next(iter(fr.values()), {}).get("rate")
    add(
        f"fixed {rate} req/s: p50 / p99 ms",
        lambda t: f"{fr[t]['p50_ms']:.2f} / {fr[t]['p99_ms']:.2f}",
    )
    add(
        f"fixed {rate} req/s: achieved req/s, errors",
        lambda t: f"{fr[t]['achieved_rps']:.0f}, {fr[t]['errors']}",
    )
    mem = raw["memory"]
    add("RSS at start (MB)", lambda t: mem[t]["rss_start_kb"] / 1024)
    add(f"RSS after {mem.get('calls_small')} calls (MB)", lambda t: mem[t]["rss_small_kb"] / 1024)
    add(f"RSS after {mem.get('calls_large')} calls (MB)", lambda t: mem[t]["rss_large_kb"] / 1024)
    add("RSS growth", lambda t: f"{100 * summary[t]['rss_growth']:.1f}%")
    add("peak RSS, end of run (MB)", lambda t: mem[t]["peak_kb"] / 1024)
    refs = dict(raw.get("refresh_by") or {})
    if "keyfob" not in refs and raw.get("refresh"):
        refs["keyfob"] = raw["refresh"]
    add("refresh grants/s (server pinned to 1 core)", lambda t: refs[t]["grants_per_s"])
    add("refresh grants per server CPU-second", lambda t: refs[t]["grants_per_cpu_s"])
    return _table(["figure", *names], rows)


def render(raw: dict[str, Any]) -> str:
    summary = summarize(raw)
    rows = verdicts(raw, summary)
    raw["summary"], raw["verdicts"] = summary, rows
    meta = raw["meta"]
    ts = meta["timestamp"]
    when = f"{ts[:4]}-{ts[4:6]}-{ts[6:8]} {ts[9:11]}:{ts[11:13]} UTC"
    head = (
        f"Run {when} on {meta['nproc']} cores (`nproc`; {meta['cpu_model']}); "
        f"command `{meta['command']}`; preset {meta['preset']}, {meta['rounds']} round(s) "
        f"of {meta['duration_s']} s per wrk cell (medians), one worker per server, "
        f"server pinned to CPU {meta['server_cpus']}, wrk + nginx + Python clients on "
        f"CPU {meta['load_cpus']}. "
        + (
            ", ".join(f"{k} {v}" for k, v in meta["anchors"].items())
            if meta.get("anchors")
            else f"LiteLLM {meta.get('litellm_version', '-')}"
        )
        + "."
    )
    notes = [f"- {n}" for n in meta.get("notes", [])]
    return (
        "\n\n".join(
            [
                head,
                "### Targets (ratios, same run)",
                targets_table(rows),
                "### All figures",
                detail_table(raw, summary),
                *(["### Notes", "\n".join(notes)] if notes else []),
            ]
        )
        + "\n"
    )


def write_json(raw: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{raw['meta']['timestamp']}.json"
    path.write_text(json.dumps(raw, indent=2, default=str))
    return path


def write_docs(markdown: str, docs: Path) -> None:
    """Replace the marked results block of docs/BENCHMARKS.md (the rest is hand-written)."""
    block = f"{DOCS_START}\n{markdown}{DOCS_END}"
    text = docs.read_text() if docs.exists() else ""
    if DOCS_START in text and DOCS_END in text:
        text = re.sub(
            re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), lambda _m: block, text, flags=re.S
        )
    else:
        text = (text or "# Benchmarks\n") + "\n## Latest results\n\n" + block + "\n"
    docs.write_text(text)
