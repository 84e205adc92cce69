"""Assembles the ASGI app from the rooms: oauth/, gateway/ and web/.

Each room exposes a ``ROUTES`` list; endpoints find the shared services on
``request.app.state.kf`` (a ``context.Keyfob``), built in the lifespan so the store,
vault and upstream session exist exactly once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from keyfob.context import Keyfob
from keyfob.settings import Settings
from keyfob.vault import write_secret_file

log = logging.getLogger("keyfob")


def session_secret(settings: Settings) -> str:
    """The cookie-signing key: a 0600 file in the data dir, made on first start."""
    path = settings.data_dir / "session.key"
    if not path.exists():
        write_secret_file(path, secrets.token_urlsafe(48))
    return path.read_text("utf-8").strip()


def collect_routes() -> list[BaseRoute]:
    from keyfob.gateway.routes import KEYFOB_API_ROUTES
    from keyfob.gateway.routes import ROUTES as gateway_routes
    from keyfob.oauth.routes import ROUTES as oauth_routes
    from keyfob.web.routes import ROUTES as web_routes
    from keyfob.web.usage_export import ROUTES as export_routes

    return [
        Route("/healthz", healthz),
        *oauth_routes,
        *gateway_routes,
        *KEYFOB_API_ROUTES,
        *export_routes,
        *web_routes,
    ]


async def healthz(request: Request) -> Response:
    """Liveness: answers once the lifespan has opened the store."""
    ok = getattr(request.app.state, "kf", None) is not None
    return PlainTextResponse("ok" if ok else "starting", status_code=200 if ok else 503)


def create_app(settings: Settings) -> Starlette:
    settings.check_safe()
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        kf = await Keyfob.open(settings)
        # A personal server is the only process on its database: any reservation still
        # open from before this start belongs to a dead process (see allowance docs).
        if settings.mode == "personal":
            charged = await kf.store.metering.reconcile_dead(started_before=time.time())
        else:
            horizon = settings.upstream_read_timeout_s * 2 + 60
            charged = await kf.store.metering.reconcile_dead(time.time() - horizon)
        if charged:
            log.warning("charged %d unsettled reservations from a previous run", charged)
        kf.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.upstream_connect_timeout_s,
                sock_read=settings.upstream_read_timeout_s,
            ),
        )
        # Load the bundled tokenizer now: loading it lazily inside the first stream holds
        # the GIL for half a second and stalls every relay in flight.
        from keyfob.gateway.estimate import count

        await asyncio.to_thread(count, "warm up")
        app.state.kf = kf
        try:
            yield
        finally:
            await kf.close()

    secure = settings.issuer.startswith("https://")
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret(settings),
            session_cookie="keyfob_session",
            same_site="lax",
            https_only=secure,
            max_age=14 * 24 * 3600,
        ),
    ]
    app = Starlette(routes=collect_routes(), middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    return app
