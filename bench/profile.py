"""``python -m bench profile``: where Keyfob's time goes under load.

``--profile-target keyfob-hosted`` profiles hosted mode (PostgreSQL + Redis) instead;
PostgreSQL's own CPU per call is printed beside it.

Why py-spy: it samples the running server from outside (no code change, no import hook
skewing the numbers; ``--nonblocking`` so sampling does not slow it down). Keyfob runs alone
against nginx with wrk at c=8 on chat calls plus two streaming connections.

Why the extra bookkeeping: py-spy cannot tell a thread blocked in a C call from a busy
one, so aiosqlite's worker thread, blocked in ``SimpleQueue.get`` between statements, looks
busy (and ``--gil`` charges idle time to the last GIL holder). So CPU per thread comes from
/proc (utime + stime per task), and the per-library breakdown counts the event-loop
thread's samples only. Output: a flame graph (SVG) and raw stacks in bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import load, procs, targets
from bench.upstream import start_nginx

RESULTS = Path(__file__).resolve().parent / "results"


def _frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep repo-relative bits
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    file = where.rsplit(":", 1)[0]
    return f"{name} ({file})"


def top_frames(collapsed: Path, n: int = 25) -> tuple[int, list[tuple[str, int, int]]]:
    """(total samples, [(frame, self samples, inclusive samples)]) from py-spy raw output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [
            _frame(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if frames:
            self_c[frames[-1]] += c
        for f in set(frames):
            incl_c[f] += c
    ranked = sorted(incl_c, key=lambda f: (-self_c[f], -incl_c[f]))[:n]
    return total, [(f, self_c[f], incl_c[f]) for f in ranked]


LIBRARIES = (
    "asyncpg",
    "aiosqlite",
    "sqlalchemy",
    "aiohttp",
    "starlette",
    "uvicorn",
    "keyfob",
    "asyncio",
    "json",
)


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds (utime + stime) of each thread of ``pid``: tid -> (name, seconds)."""
    out: dict[str, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / procs.CLK_TCK)
    return out


def by_library(collapsed: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(CPU share by the leaf frame's library, inclusive share of each Keyfob function)."""
    libs: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("_connection_worker_thread" in f for f in frames):
            continue  # aiosqlite's worker: its CPU comes from /proc instead (see above)
        leaf = frames[-1]
        libs[
            next((lib for lib in LIBRARIES if f"/{lib}/" in leaf or f"{lib}/" in leaf), "other")
        ] += int(count)
        for f in {_frame(f) for f in frames if "keyfob/" in f}:
            ours[f] += int(count)
    return libs, ours


def profile(args: argparse.Namespace) -> int:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: python -m pip install py-spy")
    load_cpus, server_cpus = (set(), set()) if args.no_pin else procs.cpu_split()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    svg = RESULTS / f"profile-{stamp}.svg"
    raw = RESULTS / f"profile-{stamp}.txt"
    seconds = args.profile_s
    with tempfile.TemporaryDirectory(prefix="keyfob-profile-") as tmp:
        workdir = Path(tmp)
        up = start_nginx(workdir, load_cpus)
        kf: targets.Target | None = None
        try:
            if getattr(args, "profile_target", "keyfob") == "keyfob-hosted":
                kf = targets.keyfob_hosted(up, workdir, server_cpus, 1)
            else:
                kf = targets.keyfob(up, workdir, server_cpus, refresh_chains=1)
            load.run_wrk(kf, workdir, connections=10, duration_s=3)  # warm-up
            threads0 = thread_cpu(kf.worker_pid)
            recorders = []
            for fmt, out in (("flamegraph", svg), ("raw", raw)):
                recorders.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(kf.worker_pid),
                            "--duration",
                            str(int(seconds)),
                            "--rate",
                            "250",
                            "--format",
                            fmt,
                            "--output",
                            str(out),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            # chat calls on one thread of wrk, streams alongside (the mix is ~4:1)
            streams = threading.Thread(
                target=load.run_wrk,
                args=(kf, workdir),
                kwargs={"connections": 2, "duration_s": seconds, "stream": True},
            )
            streams.start()
            r = load.run_wrk(kf, workdir, connections=8, duration_s=seconds)
            streams.join()
            threads1 = thread_cpu(kf.worker_pid)
            for rec in recorders:
                _, err = rec.communicate(timeout=seconds + 60)
                if rec.returncode != 0:
                    print(err.decode(errors="replace"))
        finally:
            if kf is not None:
                kf.stop()
            up.stop()
    print(
        f"load during the profile: {r.rps:,.0f} chat req/s at c=8 (+2 streaming), "
        f"{r.cpu_ms_per_call:.3f} ms CPU per chat call"
        + (f", PostgreSQL {r.db_cpu_ms_per_call:.3f} ms" if kf.db_name else "")
    )
    calls = max(r.requests - r.errors, 1)
    print("\nCPU per chat call by thread (from /proc; streams' CPU included):")
    for tid, (name, cpu1) in sorted(threads1.items()):
        used = cpu1 - threads0.get(tid, (name, 0.0))[1]
        if used > 0:
            role = "event loop" if tid == str(kf.worker_pid) else "other thread"
            print(f"{1000 * used / calls:8.2f} ms  tid {tid} {name} ({role})")
    libs, ours = by_library(raw)
    total = sum(libs.values()) or 1
    print(f"\n{total} event-loop thread samples; by library of the running frame:")
    for lib, c in libs.most_common():
        print(f"{100 * c / total:6.1f}%  {lib}")
    print("\nKeyfob functions, inclusive:")
    for f, c in ours.most_common(15):
        print(f"{100 * c / total:6.1f}%  {f}")
    total, rows = top_frames(raw)
    print("\nframes ranked by self time (self %, inclusive %):\n")
    for frame, s, i in rows:
        print(f"{100 * s / total:6.1f}%  {100 * i / total:6.1f}%  {frame}")
    print(
        f"\nflame graph: {svg.relative_to(RESULTS.parent.parent)}; "
        f"collapsed stacks: {raw.relative_to(RESULTS.parent.parent)}"
    )
    return 0
