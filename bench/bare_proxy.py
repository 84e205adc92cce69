"""The smallest pass-through on Keyfob's stack: the floor for Python on this stack.

Starlette + uvicorn (uvloop, httptools) + one pooled aiohttp ClientSession, and nothing
else: no auth, no parsing of the JSON body, no metering. Whatever Keyfob adds above this
is the price of its own work. Run as ``python -m bench.bare_proxy --port P --upstream URL``;
it forwards every path unchanged, so ``/stream/...`` reaches the upstream's SSE path.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED = ("content-type", "authorization")


def create_app(upstream: str) -> Starlette:
    holder: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        holder["http"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        )
        try:
            yield
        finally:
            await holder["http"].close()

    async def proxy(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        resp = await holder["http"].request(
            request.method, upstream + request.url.path, data=body, headers=headers
        )
        if resp.content_type == "text/event-stream":

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return StreamingResponse(
                relay(), status_code=resp.status, media_type="text/event-stream"
            )
        data = await resp.read()
        resp.release()
        return Response(data, status_code=resp.status, media_type=resp.content_type)

    return Starlette(
        routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])], lifespan=lifespan
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
