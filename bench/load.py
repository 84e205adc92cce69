"""Load generators: wrk for closed-loop throughput and latency, aiohttp for the rest.

Why two: wrk (C, one thread pinned next to nginx) is far faster than anything under test,
so its numbers are the target's, not the client's. It cannot time the first byte of a
stream nor hold a fixed request rate (Debian has no wrk2), so a small aiohttp client does
those: first-byte/total timing of streams, and an open-loop fixed-rate run whose
latencies count from each call's scheduled start (no coordinated omission).
Every run is bounded in time and in count and stops itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.targets import Target

WRK_TIMEOUT_S = 5


@dataclass
class WrkResult:
    connections: int
    stream: bool
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_s: float = 0.0
    #: PostgreSQL's CPU for the target's database during the run (hosted targets)
    db_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        # wrk counts refused connections as errors but not as requests: never below zero
        ok = max(0, self.requests - self.errors)
        return ok / self.duration_s if self.duration_s else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / max(self.requests, 1)

    @property
    def cpu_ms_per_call(self) -> float:
        ok = self.requests - self.errors
        return 1000 * self.cpu_s / ok if ok else math.nan

    @property
    def db_cpu_ms_per_call(self) -> float:
        ok = self.requests - self.errors
        return 1000 * self.db_cpu_s / ok if ok else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rps": self.rps,
            "error_rate": self.error_rate,
            "cpu_ms_per_call": self.cpu_ms_per_call,
            "db_cpu_ms_per_call": self.db_cpu_ms_per_call,
            "total_cpu_ms_per_call": self.cpu_ms_per_call + self.db_cpu_ms_per_call,
        }


def _lua_string(data: str) -> str:
    return "[==[" + data + "]==]"


def wrk_script(target: Target, stream: bool) -> str:
    """POST body and headers, and a ``done`` hook printing the result as JSON (no
    ``response`` hook: defining one makes wrk hand every body to Lua, slowing it down).
    A target with several tokens gets a ``request`` hook that uses them in turn, each
    request pre-formatted once."""
    headers = {"Content-Type": "application/json", **target.headers_for(stream)}
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(target.body(stream).decode())}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    if target.tokens:
        lines += ["local reqs = {}", "local n = 0", "init = function(args)"]
        for tok in target.tokens:
            lines.append(
                f'  wrk.headers["Authorization"] = {_lua_string("Bearer " + tok)}; '
                "reqs[#reqs + 1] = wrk.format()"
            )
        lines += [
            "end",
            "request = function()",
            "  n = n % #reqs + 1",
            "  return reqs[n]",
            "end",
        ]
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format("BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,'
        '\\"errors\\":%d,\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"mean\\":%f}\\n",',
        "    summary.requests, summary.duration,",
        "    e.connect + e.read + e.write + e.status + e.timeout,",
        "    latency:percentile(50), latency:percentile(90), latency:percentile(99),",
        "    latency.mean))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(
    target: Target,
    workdir: Path,
    *,
    connections: int,
    duration_s: float,
    stream: bool = False,
) -> WrkResult:
    """One closed-loop wrk run (one thread, bounded by ``duration_s``), after the target
    has gone idle; CPU time of the target's worker is measured around it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    script = workdir / f"wrk-{target.name}-{'s' if stream else 'c'}.lua"
    script.write_text(wrk_script(target, stream))
    procs.wait_idle(target.worker_pid)
    pids = target.cpu_pids()
    cpu0 = procs.cpu_snapshot(pids)
    db0 = procs.cpu_snapshot(procs.postgres_pids(target.db_name)) if target.db_name else {}
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "-s",
            str(script),
            target.url(stream),
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    cpu1 = procs.cpu_snapshot(pids)
    db1 = procs.cpu_snapshot(procs.postgres_pids(target.db_name)) if target.db_name else {}
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        if target.proc is not None and not target.proc.alive():
            raise TargetDied(target.name, target.proc.popen.returncode, target.proc.log_tail())
        raise RuntimeError(f"wrk gave no result for {target.name}:\n{out.stdout}\n{out.stderr}")
    d = json.loads(line.removeprefix("BENCH_JSON "))
    if d["requests"] == 0:  # nothing completed within the run: no latency to report
        d.update(p50=math.nan, p90=math.nan, p99=math.nan, mean=math.nan)
    return WrkResult(
        connections,
        stream,
        d["requests"],
        d["errors"],
        d["duration_us"] / 1e6,
        d["p50"] / 1000,
        d["p90"] / 1000,
        d["p99"] / 1000,
        d["mean"] / 1000,
        procs.cpu_delta(cpu0, cpu1),
        procs.cpu_delta(db0, db1),
    )


class TargetDied(RuntimeError):
    """The server under test exited during the run: its remaining cells are skipped and
    the report says so, instead of the whole run being lost."""

    def __init__(self, name: str, code: int | None, log_tail: str) -> None:
        super().__init__(f"{name} exited (code {code}) during the run")
        self.name = name
        self.log_tail = log_tail


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(pct / 100 * len(s)) - 1))
    return s[k]


def _headers(target: Target, stream: bool) -> dict[str, str]:
    return {"Content-Type": "application/json", **target.headers_for(stream)}


async def _stream_timing(target: Target, calls: int, max_s: float) -> dict[str, Any]:
    """Sequential streamed calls on one kept-alive connection: time to the first body
    byte and to the end of the stream."""
    first: list[float] = []
    total: list[float] = []
    errors = 0
    body, url, headers = target.body(True), target.url(True), _headers(target, True)
    timeout = aiohttp.ClientTimeout(total=WRK_TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), timeout=timeout
    ) as http:
        deadline = time.perf_counter() + max_s
        for _ in range(calls):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    chunk = await resp.content.readany()
                    t1 = time.perf_counter()
                    rest = await resp.read()
                    t2 = time.perf_counter()
                    if resp.status != 200 or b"[DONE]" not in chunk + rest:
                        errors += 1
                        continue
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                continue
            first.append((t1 - t0) * 1000)
            total.append((t2 - t0) * 1000)
    return {
        "calls": len(first),
        "errors": errors,
        **{f"first_p{p}_ms": percentile(first, p) for p in (50, 90, 99)},
        **{f"total_p{p}_ms": percentile(total, p) for p in (50, 90, 99)},
    }


def stream_timing(target: Target, calls: int, max_s: float) -> dict[str, Any]:
    procs.wait_idle(target.worker_pid)
    return asyncio.run(_stream_timing(target, calls, max_s))


async def _fixed_rate(target: Target, rate: float, duration_s: float) -> dict[str, Any]:
    """Open loop: call i is due at start + i/rate, whatever happened to earlier calls."""
    latencies: list[float] = []
    errors = 0
    body, url, headers = target.body(False), target.url(False), _headers(target, False)
    timeout = aiohttp.ClientTimeout(total=WRK_TIMEOUT_S)
    n = int(rate * duration_s)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), timeout=timeout
    ) as http:
        start = time.perf_counter() + 0.05

        async def one(due: float) -> None:
            nonlocal errors
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - due) * 1000)
            else:
                errors += 1

        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "duration_s": duration_s,
        "sent": n,
        "ok": len(latencies),
        "errors": errors,
        "achieved_rps": len(latencies) / elapsed if elapsed else 0.0,
        **{f"p{p}_ms": percentile(latencies, p) for p in (50, 90, 99)},
    }


def fixed_rate(target: Target, rate: float, duration_s: float) -> dict[str, Any]:
    procs.wait_idle(target.worker_pid)
    return asyncio.run(_fixed_rate(target, rate, duration_s))
