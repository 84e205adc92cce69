"""``python -m bench.inproc``: CPU per call of the ASGI apps themselves, no socket in front.

Why: wrk figures on a shared two-core machine move by +-20% between runs, which hides
changes of 50 us. Here the Keyfob app and the bare proxy are driven in this one process
(same nginx upstream, sequential calls, ``time.process_time()``), so a change to the hot
path shows as a difference of microseconds per call. ``--profile`` adds cProfile for
Keyfob. This complements the wire benchmark (``python -m bench``), it does not replace it:
uvicorn's own work is not in these figures.
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

from bench import targets
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
) -> float:
    """Warm up, then ``n`` sequential calls; returns CPU microseconds per call."""
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
    await lifespan_q.put({"type": "lifespan.shutdown"})
    await out_q.get()
    await task
    return per_call_us


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
    ap.add_argument("--stream", action="store_true", help="streamed calls")
    ap.add_argument("-c", "--concurrency", type=int, default=1, help="calls in flight")
    args = ap.parse_args()

    import uvloop

    from bench.bare_proxy import create_app as bare_app

    with tempfile.TemporaryDirectory(prefix="keyfob-inproc-") as tmp:
        work = Path(tmp)
        up = start_nginx(work, set())
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
            os.environ.update(env)
            from keyfob.server import create_app as keyfob_app
            from keyfob.settings import Settings

            model = f"nginxs/{MODEL}" if args.stream else f"nginx/{MODEL}"
            payload = targets.Target("k", "", {}, "", f"nginx/{MODEL}", "", model)
            kbody = payload.body(args.stream)
            auth = [(b"authorization", f"Bearer {seeded['access_token']}".encode())]
            bpath = "/stream/v1/chat/completions" if args.stream else "/v1/chat/completions"
            bbody = targets.Target("b", "", {}, "", MODEL, "", MODEL).body(args.stream)

            async def measure() -> None:
                for r in range(args.rounds):
                    b = await drive(
                        "bare", bare_app(up.url), bpath, bbody, [], args.n, args.concurrency
                    )
                    kapp = keyfob_app(Settings.from_env())
                    prof = cProfile.Profile() if args.profile and r == args.rounds - 1 else None
                    if prof:
                        prof.enable()
                    k = await drive(
                        "keyfob",
                        kapp,
                        "/v1/chat/completions",
                        kbody,
                        auth,
                        args.n,
                        args.concurrency,
                    )
                    if prof:
                        prof.disable()
                        pstats.Stats(prof).sort_stats("tottime").print_stats(45)
                    print(
                        f"round {r + 1}: bare {b:7.1f} us/call  keyfob {k:7.1f} us/call  "
                        f"extra {k - b:7.1f} us  ratio {k / b:5.2f}",
                        flush=True,
                    )

            uvloop.run(measure())
        finally:
            up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
