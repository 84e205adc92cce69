"""``python -m bench scale``: hosted mode with 1, 2 and 4 processes, one grant and ten.

Why its own mode: the main run compares one process of each system on one core; this
asks what more processes on one database buy, and what many calls on one grant's
counters cost (every call of one grant holds the same counter rows; ten grants spread
them). Each layout is a fresh database with ``keyfob serve --workers N`` on one port
(uvicorn's supervisor hands the socket to N workers), seeded like the main run. The
load generator (wrk, nginx) stays on its CPU; the server's processes may use every CPU,
since on two cores a second process has nowhere else to go. So the figures that travel
are per core: CPU per call of Keyfob's processes and of PostgreSQL's, and requests/s
per core those two used. Personal mode runs in the same layout as the reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load, procs, targets
from bench.report import median
from bench.upstream import start_nginx

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "SCALING.md"
DOCS_START = "<!-- bench:scale:start -->"
DOCS_END = "<!-- bench:scale:end -->"
CONNECTIONS = (10, 50)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def measure(t: targets.Target, workdir: Path, duration: float, rounds: int) -> dict[str, Any]:
    """Median over rounds of each concurrency's cell (chat calls)."""
    out: dict[str, Any] = {}
    load.run_wrk(t, workdir, connections=10, duration_s=2)  # warm-up
    for n in CONNECTIONS:
        runs = [load.run_wrk(t, workdir, connections=n, duration_s=duration) for _ in range(rounds)]
        cell: dict[str, float] = {
            "rps": median([r.rps for r in runs]),
            "p50_ms": median([r.p50_ms for r in runs]),
            "p99_ms": median([r.p99_ms for r in runs]),
            "cpu_ms": median([r.cpu_ms_per_call for r in runs]),
            "db_cpu_ms": median([r.db_cpu_ms_per_call for r in runs]),
            "errors": float(sum(r.errors for r in runs)),
        }
        total = cell["cpu_ms"] + cell["db_cpu_ms"]
        # requests/s per core the server side used (Keyfob's processes + PostgreSQL's)
        cell["rps_per_core"] = 1000.0 / total if total else math.nan
        cell["cores_used"] = cell["rps"] * total / 1000.0
        out[f"c{n}"] = cell
        say(
            f"  {t.name} c={n}: {cell['rps']:,.0f} req/s, p50 {cell['p50_ms']:.2f} ms, "
            f"CPU {cell['cpu_ms']:.2f} + PostgreSQL {cell['db_cpu_ms']:.2f} ms per call, "
            f"{cell['rps_per_core']:,.0f} req/s per core, errors {cell['errors']:.0f}"
        )
    return out


def render(raw: dict[str, Any]) -> str:
    meta = raw["meta"]
    ts = meta["timestamp"]
    when = f"{ts[:4]}-{ts[4:6]}-{ts[6:8]} {ts[9:11]}:{ts[11:13]} UTC"
    head = (
        f"Run {when} on {meta['nproc']} cores; command `{meta['command']}`; "
        f"{meta['rounds']} round(s) of {meta['duration_s']} s per cell (medians), chat calls; "
        f"wrk + nginx on CPU {meta['load_cpus']}, the server's processes and PostgreSQL "
        "on any CPU. CPU per call: utime + stime of Keyfob's processes, and of PostgreSQL's "
        "backends for the database plus its background processes; req/s per core = 1000 / "
        "(both CPU figures)."
    )
    lines = [
        "| layout | grants | c | req/s | p50 ms | p99 ms | Keyfob CPU ms/call | "
        "PostgreSQL CPU ms/call | req/s per core | cores used | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in raw["layouts"]:
        for n in CONNECTIONS:
            c = r["cells"].get(f"c{n}")
            if c is None:
                continue
            lines.append(
                f"| {r['label']} | {r['grants']} | {n} | {c['rps']:,.0f} | {c['p50_ms']:.2f} | "
                f"{c['p99_ms']:.2f} | {c['cpu_ms']:.3f} | {c['db_cpu_ms']:.3f} | "
                f"{c['rps_per_core']:,.0f} | {c['cores_used']:.2f} | {c['errors']:.0f} |"
            )
    notes = "".join(f"\n- {n}" for n in meta["notes"])
    return head + "\n\n" + "\n".join(lines) + ("\n\nNotes:\n" + notes if notes else "") + "\n"


def scale(args: argparse.Namespace) -> int:
    load_cpus, _server = (set(), set()) if args.no_pin else procs.cpu_split()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    everything = set(range(os.cpu_count() or 1))
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "command": ("python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])),
            "nproc": os.cpu_count(),
            "rounds": args.rounds,
            "duration_s": args.duration,
            "load_cpus": sorted(load_cpus) or "any",
            "notes": [],
        },
        "layouts": [],
    }
    with tempfile.TemporaryDirectory(prefix="keyfob-scale-") as tmp:
        workdir = Path(tmp)
        up = start_nginx(workdir, load_cpus)
        try:
            say("personal mode (reference), one process")
            t = targets.keyfob(up, workdir, everything, refresh_chains=0)
            try:
                cells = measure(t, workdir, args.duration, args.rounds)
            finally:
                t.stop()
            raw["layouts"].append({"label": "personal, 1 process", "grants": 1, "cells": cells})
            for w in workers:
                for grants in (1, 10):
                    label = f"hosted, {w} process{'es' if w > 1 else ''}"
                    say(f"{label}, {grants} grant(s)")
                    t = targets.keyfob_hosted(
                        up,
                        workdir,
                        everything,
                        0,
                        name=f"hosted-{w}w-{grants}g",
                        workers=w,
                        grants=grants,
                    )
                    try:
                        cells = measure(t, workdir, args.duration, args.rounds)
                    finally:
                        t.stop()
                    raw["layouts"].append({"label": label, "grants": grants, "cells": cells})
        finally:
            up.stop()
    markdown = render(raw)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{stamp}.json"
    path.write_text(json.dumps(raw, indent=2, default=str))
    print("\n" + markdown)
    say(f"raw results: {path.relative_to(RESULTS.parent.parent)}")
    if args.write_docs:
        write_docs(markdown, DOCS)
        say(f"updated {DOCS.relative_to(RESULTS.parent.parent)}")
    return 0


def write_docs(markdown: str, docs: Path) -> None:
    """Replace the marked block of docs/SCALING.md (the rest is hand-written)."""
    block = f"{DOCS_START}\n{markdown}{DOCS_END}"
    text = docs.read_text() if docs.exists() else "# Scaling hosted Keyfob\n"
    if DOCS_START in text and DOCS_END in text:
        text = re.sub(
            re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), lambda _m: block, text, flags=re.S
        )
    else:
        text += "\n" + block + "\n"
    docs.write_text(text)
