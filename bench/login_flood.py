"""``python -m bench.login_flood``: the gateway's added latency during a login flood.

Why: each login costs an argon2id hash (~50 ms of a core, by design). Hashed on the event
loop, a 4-client login flood pushed the gateway's p50 from 2.6 to 13.9 ms (issue 11).
Keyfob hashes in a low-priority worker thread, one at a time, and turns away logins
beyond a short queue; the target is an added p50 within 1.2x of quiet.

How: nginx (the upstream) and a ``keyfob serve`` pinned to a core of its own, as in
``python -m bench``. A probe sends sequential chat calls on one kept-alive connection,
first straight to nginx (the floor), then to Keyfob quiet, then to Keyfob while
``--flooders`` clients post wrong passwords for ever-new usernames (so no throttle
answers them early: every one costs a hash). Quiet and flood alternate for ``--rounds``
rounds; the medians of the round p50s are reported. Added latency = Keyfob's p50 minus
nginx's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs, targets
from bench.load import percentile
from bench.upstream import start_nginx


async def _probe(url: str, headers: dict[str, str], body: bytes, duration_s: float) -> list[float]:
    """Latencies (ms) of sequential calls on one connection for ``duration_s``."""
    out: list[float] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), timeout=timeout
    ) as http:
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"probe answered {resp.status}")
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def _flooder(base: str, stop: asyncio.Event, statuses: Counter[int]) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # the session cookie of 127.0.0.1 (CSRF)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), cookie_jar=jar
    ) as http:
        async with http.get(base + "/login") as page:
            text = await page.text()
        marker = 'name="csrf_token" value="'
        csrf = text.split(marker, 1)[1].split('"', 1)[0]
        while not stop.is_set():
            form = {
                "csrf_token": csrf,
                "username": "flood" + secrets.token_hex(6),
                "password": secrets.token_urlsafe(12),
            }
            async with http.post(base + "/login", data=form, allow_redirects=False) as resp:
                await resp.read()
                statuses[resp.status] += 1


async def _measure(
    target: targets.Target, flooders: int, duration_s: float
) -> tuple[list[float], Counter[int]]:
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_flooder(target.base_url, stop, statuses)) for _ in range(flooders)
    ]
    await asyncio.sleep(0.5)  # the flood is on before the probe starts
    try:
        headers = {"Content-Type": "application/json", **target.headers}
        lat = await _probe(target.url(False), headers, target.body(False), duration_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return lat, statuses


def run(duration_s: float, rounds: int, flooders: int, share: bool) -> dict[str, Any]:
    load_cpus, server_cpus = procs.cpu_split()
    if share:  # the server (and its hashing worker) may use every core
        server_cpus = load_cpus | server_cpus
    with tempfile.TemporaryDirectory(prefix="keyfob-login-flood-") as tmp:
        work = Path(tmp)
        upstream = start_nginx(work, load_cpus)
        target = None
        try:
            target = targets.keyfob(upstream, work, server_cpus, refresh_chains=0)
            body = target.body(False)
            direct_url = upstream.url + "/v1/chat/completions"
            headers = {"Content-Type": "application/json"}
            asyncio.run(_probe(target.url(False), {**headers, **target.headers}, body, 2.0))
            direct, quiet, flood = [], [], []
            logins: Counter[int] = Counter()
            login_s = 0.0
            for _ in range(rounds):
                direct.append(percentile(asyncio.run(_probe(direct_url, headers, body, 3.0)), 50))
                q = asyncio.run(
                    _probe(target.url(False), {**headers, **target.headers}, body, duration_s)
                )
                quiet.append(percentile(q, 50))
                procs.wait_idle(target.worker_pid)
                f, statuses = asyncio.run(_measure(target, flooders, duration_s))
                flood.append(percentile(f, 50))
                logins.update(statuses)
                login_s += duration_s + 0.5
        finally:
            if target is not None:
                target.stop()
            upstream.stop()
    d, q50, f50 = (statistics.median(x) for x in (direct, quiet, flood))
    return {
        "flooders": flooders,
        "rounds": rounds,
        "duration_s": duration_s,
        "direct_p50_ms": d,
        "quiet_p50_ms": q50,
        "flood_p50_ms": f50,
        "added_quiet_ms": q50 - d,
        "added_flood_ms": f50 - d,
        "ratio": (f50 - d) / (q50 - d) if q50 > d else float("nan"),
        "logins_per_s": sum(logins.values()) / login_s if login_s else 0.0,
        "login_statuses": dict(logins),
        "server_cpus": sorted(server_cpus),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per probe")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flooders", type=int, default=4, help="concurrent login clients")
    ap.add_argument(
        "--all-cores",
        action="store_true",
        help="do not pin the server to a core of its own (its hashing worker may then "
        "run beside the event loop instead of sharing its core)",
    )
    args = ap.parse_args(argv)
    r = run(args.duration, args.rounds, args.flooders, args.all_cores)
    print(
        f"login flood ({r['flooders']} clients, {r['rounds']} rounds x {r['duration_s']:.0f} s, "
        f"server on cpu {r['server_cpus']}):\n"
        f"  nginx direct p50        {r['direct_p50_ms']:.3f} ms\n"
        f"  keyfob quiet p50        {r['quiet_p50_ms']:.3f} ms (added {r['added_quiet_ms']:.3f})\n"
        f"  keyfob flood p50        {r['flood_p50_ms']:.3f} ms (added {r['added_flood_ms']:.3f})\n"
        f"  added p50, flood/quiet  {r['ratio']:.2f}x (target <= 1.2x)\n"
        f"  logins answered         {r['logins_per_s']:.1f}/s {r['login_statuses']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
