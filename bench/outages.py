"""``python -m bench.outages``: what one hosted process answers when Redis stops, and
when PostgreSQL drops its connections, endpoint by endpoint.

Why a measurement and not only a reading of the code: docs/SCALING.md says what falls
back, what fails closed and how long recovery takes, and those sentences should be the
ones this script prints. It starts its own redis-server on a free loopback port (the
shared one is never touched), a hosted process on a fresh database using it, and nginx
as the upstream; it probes each kind of endpoint with Redis up, stopped and started
again. For PostgreSQL it does not restart the shared server: it terminates every
backend of its own database (``pg_terminate_backend``), which is what a restart does to
a process's connections, while calls are being sent, and reports the answers, how long
until calls succeed again, and the ledger rows left open. Bounded: a few hundred calls.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs, targets
from bench.upstream import start_nginx

RATE = 50.0  # calls per second while the connections are dropped
CALLS = 300


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_redis(workdir: Path) -> tuple[procs.Proc, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (make services installs it)")
    port = procs.free_port()
    proc = procs.start(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        workdir / f"redis-{port}.log",
        cwd=workdir,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError("redis-server did not start")


def restart_redis(workdir: Path, port: int) -> procs.Proc:
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = procs.start(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        workdir / f"redis-{port}-again.log",
        cwd=workdir,
    )
    time.sleep(0.5)
    return proc


def probe(t: targets.Target) -> dict[str, Any]:
    """One request of each kind: (status, seconds, a short answer)."""
    out: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        try:
            r = fn()
            out[name] = (r.status_code, round(time.perf_counter() - t0, 3), r.text[:90])
        except httpx.HTTPError as exc:
            out[name] = ("error", round(time.perf_counter() - t0, 3), type(exc).__name__)

    with httpx.Client(base_url=t.base_url, timeout=15) as http:
        chat = {"Authorization": t.headers["Authorization"], "Content-Type": "application/json"}
        timed(
            "gateway chat call",
            lambda: http.post("/v1/chat/completions", content=t.body(False), headers=chat),
        )
        timed("GET /readyz", lambda: http.get("/readyz"))
        timed(
            "refresh-token grant",
            lambda: http.post(
                "/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "client_id": t.extra["client_id"],
                    "refresh_token": t.extra["refresh_tokens"].pop(),
                },
            ),
        )

        def login() -> httpx.Response:
            page = http.get("/login")
            m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            form = {"username": "bench", "password": "wrong-password-for-the-probe"}
            if m:
                form["csrf_token"] = m.group(1)
            return http.post("/login", data=form)

        timed("POST /login (wrong password)", login)
        timed(
            "POST /oauth/register",
            lambda: http.post(
                "/oauth/register",
                json={
                    "client_name": "probe",
                    "redirect_uris": ["http://127.0.0.1/cb"],
                    "token_endpoint_auth_method": "none",
                },
            ),
        )
    return out


async def _calls_while_dropping(t: targets.Target, drop_at_s: float) -> dict[str, Any]:
    """CALLS calls at RATE per second; at ``drop_at_s`` every backend of the database is
    terminated. Returns the answers by status and when calls succeed again."""
    import asyncpg  # type: ignore[import-untyped]

    results: list[tuple[float, int | str]] = []
    headers = {"Authorization": t.headers["Authorization"], "Content-Type": "application/json"}
    dropped_at = 0.0
    killed = 0
    async with httpx.AsyncClient(base_url=t.base_url, timeout=15) as http:
        start = time.perf_counter()

        async def one(i: int) -> None:
            due = start + i / RATE
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                r = await http.post("/v1/chat/completions", content=t.body(False), headers=headers)
                results.append((due - start, r.status_code))
            except httpx.HTTPError as exc:
                results.append((due - start, type(exc).__name__))

        async def drop() -> None:
            nonlocal dropped_at, killed
            await asyncio.sleep(drop_at_s)
            conn = await asyncpg.connect(targets.PG_ADMIN_URL)
            try:
                dropped_at = time.perf_counter() - start
                killed = len(
                    await conn.fetch(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = $1 AND pid <> pg_backend_pid()",
                        t.db_name,
                    )
                )
            finally:
                await conn.close()

        await asyncio.gather(drop(), *(one(i) for i in range(CALLS)))
    by_status = collections.Counter(str(s) for _, s in results)
    failed_after = [at for at, s in results if s != 200 and at >= dropped_at]
    return {
        "calls": len(results),
        "by_status": dict(by_status),
        "backends_terminated": killed,
        "dropped_at_s": round(dropped_at, 3),
        "last_failure_after_drop_s": (
            round(max(failed_after) - dropped_at, 3) if failed_after else None
        ),
    }


async def _open_rows(db_url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT status, needs_reconciliation, count(*) AS n FROM ledger GROUP BY 1, 2"
        )
    finally:
        await conn.close()
    flag = {True: " (flagged)", False: ""}
    return {f"{r['status']}{flag[bool(r['needs_reconciliation'])]}": r["n"] for r in rows}


def main() -> int:
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="keyfob-outages-") as tmp:
        workdir = Path(tmp)
        up = start_nginx(workdir, set())
        redis, port = start_redis(workdir)
        t: targets.Target | None = None
        try:
            t = targets.keyfob_hosted(
                up, workdir, set(), 6, redis_url=f"redis://127.0.0.1:{port}/0"
            )
            say("Redis up")
            report["redis up"] = probe(t)
            redis.stop()
            time.sleep(0.5)
            say("Redis stopped")
            report["redis stopped"] = probe(t)
            time.sleep(4)
            report["redis stopped, 4 s later"] = probe(t)
            redis = restart_redis(workdir, port)
            say("Redis started again")
            report["redis started again"] = probe(t)
            time.sleep(3)
            report["redis started again, 3 s later"] = probe(t)
            say(f"PostgreSQL: every backend of {t.db_name} terminated while calls run")
            report["postgres connections dropped"] = asyncio.run(_calls_while_dropping(t, 2.0))
            time.sleep(3)
            base = targets.PG_ADMIN_URL.rsplit("/", 1)[0]
            report["ledger after"] = asyncio.run(_open_rows(f"{base}/{t.db_name}"))
            log = t.proc.log_tail(100000) if t.proc else ""
            # what the server said about it: each error line once, with its count
            errors = collections.Counter(
                line.strip()[:200]
                for line in log.splitlines()
                if re.search(r"(Error|error|failed|WARNING|ERROR)\b", line)
                and not line.startswith(" ")
            )
            report["log tail"] = "\n".join(f"{n} x {line}" for line, n in errors.most_common(20))
        finally:
            if t is not None:
                t.stop()
            redis.stop()
            up.stop()
    log_tail = report.pop("log tail", "")
    print(json.dumps(report, indent=2))
    print("\nserver log, error lines (count x line):\n" + log_tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
