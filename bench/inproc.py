"""``python -m bench.inproc``: CPU per call of the ASGI apps themselves, no socket in front.

Why: wrk figures on a shared two-core machine move by +-20% between runs, which hides
changes of 50 us. Here the bare proxy, Keyfob in personal mode (SQLite) and Keyfob in
hosted mode (the same app on a fresh PostgreSQL database, with Redis) are driven in this
one process (same nginx upstream, sequential calls, ``time.process_time()``), so a change
to the hot path shows as a difference of microseconds per call. Hosted mode's figure is
given twice: this process alone, and with PostgreSQL's CPU for its database added (its
backends' utime + stime over the same calls), since the work moved there is still work.
``--profile`` adds cProfile for one of them (``--profile-target``). This complements the
wire benchmark (``python -m bench``), it does not replace it: uvicorn's own work is not in
these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from bench import procs, targets
from bench.upstream import MODEL, start_nginx

ASGIApp = Callable[..., Awaitable[None]]


async def call(app: ASGIApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """One HTTP request through the app's ASGI interface; returns the status."""
    sent = False
    status = 0

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    return status


async def drive(
    name: str,
    app: Any,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    n: int,
    concurrency: int = 1,
    db_name: str = "",
) -> tuple[float, float]:
    """Warm up, then ``n`` sequential calls; returns CPU microseconds per call of this
    process, and of PostgreSQL's processes for ``db_name`` (0 without one)."""
    state: dict[str, Any] = {}
    lifespan_q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    out_q: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def lreceive() -> dict[str, Any]:
        return await lifespan_q.get()

    async def lsend(message: MutableMapping[str, Any]) -> None:
        await out_q.put(message)

    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, lreceive, lsend)
    )
    await lifespan_q.put({"type": "lifespan.startup"})
    started = await out_q.get()
    assert started["type"] == "lifespan.startup.complete", started

    async def run_one() -> int:
        return await call(_with_state(app, state), path, body, headers)

    for _ in range(300):
        status = await run_one()
        assert status == 200, (name, status)
    db0 = procs.cpu_snapshot(procs.postgres_pids(db_name)) if db_name else {}
    t0 = time.process_time()
    if concurrency <= 1:
        for _ in range(n):
            await run_one()
    else:

        async def worker() -> None:
            for _ in range(n // concurrency):
                await run_one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        n = n // concurrency * concurrency
    per_call_us = (time.process_time() - t0) / n * 1e6
    db1 = procs.cpu_snapshot(procs.postgres_pids(db_name)) if db_name else {}
    await lifespan_q.put({"type": "lifespan.shutdown"})
    await out_q.get()
    await task
    return per_call_us, procs.cpu_delta(db0, db1) / n * 1e6


def _with_state(app: Any, state: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["state"] = dict(state)
        await app(scope, receive, send)

    return wrapped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=3000, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile Keyfob's calls")
    ap.add_argument(
        "--profile-target",
        choices=["personal", "hosted"],
        default="personal",
        help="whose calls --profile records",
    )
    ap.add_argument(
        "--profile-out",
        default="",
        help="also dump the profile's stats to this file (pstats format)",
    )
    ap.add_argument(
        "--no-hosted", action="store_true", help="skip hosted mode (no PostgreSQL/Redis here)"
    )
    ap.add_argument("--stream", action="store_true", help="streamed calls")
    ap.add_argument("-c", "--concurrency", type=int, default=1, help="calls in flight")
    args = ap.parse_args()

    import uvloop

    from bench.bare_proxy import create_app as bare_app

    with tempfile.TemporaryDirectory(prefix="keyfob-inproc-") as tmp:
        work = Path(tmp)
        up = start_nginx(work, set())
        cleanups: list[Callable[[], None]] = []
        try:
            data_dir = work / "keyfob-data"
            data_dir.mkdir()
            env = targets.keyfob_env(data_dir)
            subprocess.run(
                [sys.executable, "-m", "keyfob", "init", "--username", "bench"],
                env={**env, "KEYFOB_PASSWORD": secrets.token_urlsafe(24)},
                check=True,
                capture_output=True,
                timeout=120,
            )
            seeded = asyncio.run(targets._seed_keyfob(data_dir, up, 0))
            hosted: dict[str, str] | None = None
            hseeded: dict[str, Any] = {}
            if not args.no_hosted:
                # the ASGI app on PostgreSQL (+ Redis), prepared like the wire bench's
                hosted, hseeded, db = targets.prepare_hosted(up, work, 0)
                cleanups.append(lambda: targets.drop_database(db))
            os.environ.update(env)
            from keyfob.server import create_app as keyfob_app
            from keyfob.settings import Settings

            model = f"nginxs/{MODEL}" if args.stream else f"nginx/{MODEL}"
            payload = targets.Target("k", "", {}, "", f"nginx/{MODEL}", "", model)
            kbody = payload.body(args.stream)
            auth = [(b"authorization", f"Bearer {seeded['access_token']}".encode())]
            bpath = "/stream/v1/chat/completions" if args.stream else "/v1/chat/completions"
            bbody = targets.Target("b", "", {}, "", MODEL, "", MODEL).body(args.stream)

            async def one(
                label: str, app: Any, headers: list[tuple[bytes, bytes]], r: int, db: str = ""
            ) -> tuple[float, float]:
                prof = (
                    cProfile.Profile()
                    if args.profile and r == args.rounds - 1 and label == args.profile_target
                    else None
                )
                if prof:
                    prof.enable()
                got = await drive(
                    label, app, "/v1/chat/completions", kbody, headers, args.n, args.concurrency, db
                )
                if prof:
                    prof.disable()
                    if args.profile_out:
                        prof.dump_stats(args.profile_out)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(45)
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
                return got

            async def measure() -> None:
                for r in range(args.rounds):
                    b, _ = await drive(
                        "bare", bare_app(up.url), bpath, bbody, [], args.n, args.concurrency
                    )
                    k, _ = await one("personal", keyfob_app(Settings.from_env()), auth, r)
                    line = (
                        f"round {r + 1}: bare {b:7.1f} us/call  personal {k:7.1f} us/call  "
                        f"extra {k - b:7.1f} us  ratio {k / b:5.2f}"
                    )
                    if hosted is not None:
                        hauth = [(b"authorization", f"Bearer {hseeded['access_token']}".encode())]
                        h, pg = await one(
                            "hosted", keyfob_app(Settings.from_env(hosted)), hauth, r, db
                        )
                        line += (
                            f"  hosted {h:7.1f} us/call (+ PostgreSQL {pg:6.1f})  "
                            f"hosted/personal {h / k:5.2f}  with PostgreSQL {(h + pg) / k:5.2f}"
                        )
                    print(line, flush=True)

            uvloop.run(measure())
        finally:
            up.stop()
            for undo in cleanups:
                undo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
