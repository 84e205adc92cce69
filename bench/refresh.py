"""Refresh-token grants per second per core: Keyfob's ``POST /oauth/token``.

Why chains: with rotation every grant returns the refresh token the next one must use, so
one chain is strictly sequential. Several independent chains (each its own token family,
minted into the store by ``targets._seed_keyfob``) run in parallel to keep the server busy.
"Per core" is measured two ways: grants per second of wall time with the server pinned to
one core, and grants per CPU-second the server process actually used.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench import procs
from bench.targets import Target

TOKEN_PATH = "/oauth/token"


async def _chains(target: Target, duration_s: float, max_grants: int) -> dict[str, Any]:
    client_id = target.extra["client_id"]
    heads: list[str] = list(target.extra["refresh_tokens"])
    ok = errors = 0
    broken: list[str] = []
    url = target.base_url + TOKEN_PATH
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as http:
        deadline = time.perf_counter() + duration_s

        async def chain(i: int) -> None:
            nonlocal ok, errors
            token = heads[i]
            while time.perf_counter() < deadline and ok < max_grants:
                form = {
                    "grant_type": "refresh_token",
                    "client_id": client_id,
                    "refresh_token": token,
                }
                try:
                    async with http.post(url, data=form) as resp:
                        body = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    errors += 1
                    broken.append(type(exc).__name__)
                    return
                if resp.status != 200 or "refresh_token" not in body:
                    errors += 1
                    broken.append(str(body)[:200])
                    return  # a rotated-away token cannot be retried: the chain ends
                token = body["refresh_token"]
                ok += 1
            heads[i] = token

        cpu0 = procs.cpu_seconds(target.worker_pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(chain(i) for i in range(len(heads))))
        wall = time.perf_counter() - t0
        cpu = procs.cpu_seconds(target.worker_pid) - cpu0
    target.extra["refresh_tokens"] = heads
    return {
        "chains": len(heads),
        "grants": ok,
        "errors": errors,
        "wall_s": wall,
        "server_cpu_s": cpu,
        "grants_per_s": ok / wall if wall else 0.0,
        "grants_per_cpu_s": ok / cpu if cpu else 0.0,
        "failures": broken[:5],
    }


def refresh_grants(target: Target, duration_s: float, max_grants: int = 10**9) -> dict[str, Any]:
    procs.wait_idle(target.worker_pid)
    return asyncio.run(_chains(target, duration_s, max_grants))
