"""``python -m bench``: start everything, measure, report, clean up.

Why one process drives it all: the anchors (nginx direct, the bare proxy, LiteLLM) and
Keyfob are measured in the same run, interleaved cell by cell so machine noise falls on
all of them alike, and every process started here is stopped in ``finally`` whatever
happens. ``python -m bench profile`` runs Keyfob alone under load with py-spy attached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import load, procs, report, targets
from bench.refresh import refresh_grants
from bench.upstream import start_nginx

PRESETS: dict[str, dict[str, Any]] = {
    # quick: minutes, for checking the harness and a rough picture
    "quick": {
        "duration": 4.0,
        "rounds": 1,
        "calls": (2_000, 10_000),
        "stream_calls": 300,
        "rate": 200.0,
        "fixed_s": 5.0,
        "refresh_s": 5.0,
        "chains": 8,
    },
    # full: the numbers that go into docs/BENCHMARKS.md
    "full": {
        "duration": 10.0,
        "rounds": 3,
        "calls": (10_000, 100_000),
        "stream_calls": 1000,
        "rate": 200.0,
        "fixed_s": 10.0,
        "refresh_s": 10.0,
        "chains": 8,
    },
}
ALL_TARGETS = ["direct", "bare", "keyfob", "keyfob-hosted", "litellm", "portkey", "tensorzero"]
CONNECTIONS = (1, 10, 50)
RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("mode", nargs="?", choices=["run", "profile", "scale"], default="run")
    ap.add_argument("--quick", action="store_true", help="short preset (default: full)")
    ap.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated subset of " + ",".join(ALL_TARGETS),
    )
    ap.add_argument("--duration", type=float, help="seconds per wrk cell")
    ap.add_argument("--rounds", type=int, help="repeats of every wrk cell (medians)")
    ap.add_argument(
        "--calls",
        type=int,
        nargs=2,
        metavar=("SMALL", "LARGE"),
        help="RSS is read after SMALL and after LARGE calls (full: 10000 100000)",
    )
    ap.add_argument("--rate", type=float, help="requests/s of the fixed-rate run")
    ap.add_argument(
        "--litellm-rss",
        action="store_true",
        help="also drive LiteLLM through the RSS call counts (slow: ~70 req/s)",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin server vs load CPUs")
    ap.add_argument(
        "--write-docs", action="store_true", help="replace the results block of docs/BENCHMARKS.md"
    )
    ap.add_argument("--profile-s", type=float, default=20.0, help="profile: seconds sampled")
    ap.add_argument(
        "--profile-target",
        choices=["keyfob", "keyfob-hosted"],
        default="keyfob",
        help="profile: personal (SQLite) or hosted (PostgreSQL) mode",
    )
    ap.add_argument(
        "--workers",
        default="1,2,4",
        help="scale: hosted process counts to measure (comma-separated)",
    )
    args = ap.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    args.preset = "quick" if args.quick else "full"
    for key in ("duration", "rounds", "rate"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.calls = tuple(args.calls) if args.calls else preset["calls"]
    args.stream_calls = preset["stream_calls"]
    args.fixed_s, args.refresh_s, args.chains = (
        preset["fixed_s"],
        preset["refresh_s"],
        preset["chains"],
    )
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown or "direct" not in args.targets:
        ap.error(f"targets must include direct and be among {ALL_TARGETS} (got {unknown})")
    return args


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def smoke(t: targets.Target, workdir: Path) -> None:
    """One call of each kind must succeed before anything is timed."""
    for stream in (False, True) if not t.no_streams else (False,):
        r = load.stream_timing(t, 1, 10) if stream else load.fixed_rate(t, 1, 1)
        if (r.get("calls") or r.get("ok")) != 1:
            log = t.proc.log_tail() if t.proc else ""
            raise RuntimeError(
                f"{t.name}: a {'streamed' if stream else 'plain'} call failed ({r}).\n{log}"
            )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def litellm_version() -> str:
    return _venv_version(targets.LITELLM_VENV, "litellm")


def _venv_version(venv: Path, dist: str) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        return "-"
    out = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m;print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "-"


def anchor_versions(names: list[str]) -> dict[str, str]:
    out = {}
    if "litellm" in names:
        out["LiteLLM"] = litellm_version()
    if "portkey" in names:
        out["Portkey gateway"] = targets.PORTKEY_SPEC.rsplit("@", 1)[1]
    if "tensorzero" in names:
        out["TensorZero"] = _venv_version(targets.TENSORZERO_VENV, "tensorzero")
    return out


def start_targets(
    names: list[str], up: Any, workdir: Path, server_cpus: set[int], chains: int
) -> dict[str, targets.Target]:
    makers: dict[str, Callable[[], targets.Target]] = {
        "direct": lambda: targets.direct(up),
        "bare": lambda: targets.bare(up, workdir, server_cpus),
        "keyfob": lambda: targets.keyfob(up, workdir, server_cpus, chains),
        "keyfob-hosted": lambda: targets.keyfob_hosted(up, workdir, server_cpus, chains),
        "litellm": lambda: targets.litellm(up, workdir, server_cpus),
        "portkey": lambda: targets.portkey(up, workdir, server_cpus),
        "tensorzero": lambda: targets.tensorzero(up, workdir, server_cpus),
    }
    started: dict[str, targets.Target] = {}
    try:
        for name in names:
            say(f"starting {name}")
            started[name] = makers[name]()
            smoke(started[name], workdir)
    except BaseException:
        for t in started.values():
            t.stop()
        raise
    return started


def memory_phase(
    t: targets.Target, workdir: Path, calls: tuple[int, int], duration: float
) -> dict[str, Any]:
    """RSS at start, after about SMALL calls and after about LARGE calls (wrk, c=10).

    wrk cannot stop on a count (its main thread sleeps for the whole duration), so calls
    are driven in timed chunks sized from the rate seen so far; the counts reached (a few
    percent above the goal) are recorded with the RSS."""
    out: dict[str, Any] = {"rss_start_kb": procs.rss_kb(t.worker_pid)}
    served, rate = 0, 0.0
    for label, goal in (("small", calls[0]), ("large", calls[1])):
        while served < goal:
            left = goal - served
            chunk = 2.0 if rate == 0 else min(30.0, max(1.0, left / rate))
            r = load.run_wrk(t, workdir, connections=10, duration_s=chunk)
            served += r.requests
            rate = max(r.requests / r.duration_s, 1.0)
        out[f"rss_{label}_kb"] = procs.rss_kb(t.worker_pid)
        out[f"served_{label}"] = served
        say(f"  {t.name}: {served} calls, RSS {out[f'rss_{label}_kb'] / 1024:.1f} MB")
    return out


def run(args: argparse.Namespace) -> int:
    load_cpus, server_cpus = (set(), set()) if args.no_pin else procs.cpu_split()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # wrk, nginx and our clients inherit this
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    raw: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "command": command.strip(),
            "preset": args.preset,
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "rounds": args.rounds,
            "duration_s": args.duration,
            "calls": list(args.calls),
            "load_cpus": sorted(load_cpus) or "any",
            "server_cpus": sorted(server_cpus) or "any",
            "python": platform.python_version(),
            "notes": [],
            "litellm_version": litellm_version() if "litellm" in args.targets else "-",
            "anchors": {},
        },
        "targets": args.targets,
        "wrk": [],
        "stream_timing": {},
        "fixed_rate": {},
        "memory": {"calls_small": args.calls[0], "calls_large": args.calls[1]},
        "refresh": None,
    }
    with tempfile.TemporaryDirectory(prefix="keyfob-bench-") as tmp:
        workdir = Path(tmp)
        up = start_nginx(workdir, load_cpus)
        ts: dict[str, targets.Target] = {}
        try:
            ts = start_targets(args.targets, up, workdir, server_cpus, args.chains)
            raw["meta"]["anchors"] = anchor_versions(args.targets)
            raw["meta"]["notes"] += [t.no_streams for t in ts.values() if t.no_streams]
            measured = [t for t in ts.values() if t.worker_pid]

            say("memory: RSS after call counts " + " / ".join(map(str, args.calls)))
            for t in measured:
                if t.name == "litellm" and not args.litellm_rss:
                    raw["meta"]["notes"].append(
                        "LiteLLM was not driven through the RSS call counts (about 70 req/s "
                        "would take most of an hour; --litellm-rss does it)."
                    )
                    continue
                raw["memory"][t.name] = memory_phase(t, workdir, args.calls, args.duration)

            say("warm-up")
            for t in ts.values():
                load.run_wrk(t, workdir, connections=10, duration_s=2)
                if not t.no_streams:
                    load.run_wrk(t, workdir, connections=10, duration_s=1, stream=True)

            dead: set[str] = set()

            def died(exc: load.TargetDied) -> None:
                dead.add(exc.name)
                raw["meta"]["notes"].append(
                    f"{exc} (round {rnd + 1}, {'stream' if stream else 'chat'} c={n}); "
                    "its later cells are missing. Its log ended: "
                    + " | ".join(exc.log_tail.strip().splitlines()[-3:])
                )
                say(str(exc))

            rnd, stream, n = 0, False, 0
            for rnd in range(args.rounds):
                for stream in (False, True):
                    for n in CONNECTIONS:
                        for t in ts.values():
                            if t.name in dead or (stream and t.no_streams):
                                continue
                            try:
                                r = load.run_wrk(
                                    t,
                                    workdir,
                                    connections=n,
                                    duration_s=args.duration,
                                    stream=stream,
                                )
                            except load.TargetDied as exc:
                                died(exc)
                                continue
                            raw["wrk"].append({"target": t.name, "round": rnd, **r.as_dict()})
                            say(
                                f"round {rnd + 1} {'stream' if stream else 'chat'} c={n} "
                                f"{t.name}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                                f"p99 {r.p99_ms:.2f} ms, errors {r.errors}"
                            )

            live = [t for t in ts.values() if t.name not in dead]
            for t in live:
                if t.no_streams:
                    continue
                raw["stream_timing"][t.name] = st = load.stream_timing(
                    t, args.stream_calls, max_s=args.duration * 3
                )
                say(
                    f"stream first byte {t.name}: p50 {st['first_p50_ms']:.2f} ms, "
                    f"total p50 {st['total_p50_ms']:.2f} ms ({st['calls']} calls)"
                )
            for t in live:
                raw["fixed_rate"][t.name] = fr = load.fixed_rate(t, args.rate, args.fixed_s)
                say(
                    f"fixed {args.rate:.0f} req/s {t.name}: p50 {fr['p50_ms']:.2f} ms, "
                    f"p99 {fr['p99_ms']:.2f} ms, errors {fr['errors']}"
                )

            raw["refresh_by"] = {}
            for name in ("keyfob", "keyfob-hosted"):
                if name in ts and name not in dead:
                    raw["refresh_by"][name] = ref = refresh_grants(ts[name], args.refresh_s)
                    say(
                        f"refresh grants {name}: {ref['grants_per_s']:.0f}/s, "
                        f"{ref['grants_per_cpu_s']:.0f} per server CPU-second, "
                        f"errors {ref['errors']} {ref['failures']}"
                    )
            raw["refresh"] = raw["refresh_by"].get("keyfob")

            for t in measured:
                if t.name in dead:
                    continue
                mem = raw["memory"].setdefault(t.name, {})
                mem["peak_kb"] = procs.peak_rss_kb(t.worker_pid)
                mem["rss_end_kb"] = procs.rss_kb(t.worker_pid)
                mem["cpu_total_s"] = procs.cpu_seconds(t.worker_pid)
                if "rss_start_kb" not in mem:
                    mem["rss_start_kb"] = mem["rss_end_kb"]
            for t in ts.values():
                if t.proc is not None and "Traceback" in t.proc.log_tail(400):
                    raw["meta"]["notes"].append(
                        f"{t.name}'s log has a traceback; see the JSON's logs entry"
                    )
                    raw.setdefault("logs", {})[t.name] = t.proc.log_tail(80)
        finally:
            for t in ts.values():
                t.stop()
            up.stop()
    markdown = report.render(raw)
    path = report.write_json(raw, RESULTS)
    print("\n" + markdown)
    say(f"raw results: {path.relative_to(RESULTS.parent.parent)}")
    if args.write_docs:
        report.write_docs(markdown, DOCS)
        say(f"updated {DOCS.relative_to(RESULTS.parent.parent)}")
    return 0


def main() -> int:
    args = parse(sys.argv[1:])
    if args.mode == "profile":
        from bench.profile import profile

        return profile(args)
    if args.mode == "scale":
        from bench.scale import scale

        return scale(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
