"""Assembles the ASGI app from the rooms: oauth/, gateway/ and web/.

Each room exposes a ``ROUTES`` list; endpoints find the shared services on
``request.app.state.kf`` (a ``context.Keyfob``), built in the lifespan so the store,
vault and upstream session exist exactly once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import itsdangerous
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyfob.cors import Cors, request_origin
from keyfob.guard import Guard
from keyfob.instances import Heartbeat
from keyfob.logs import REQUEST_ID
from keyfob.metrics import OBSERVE, surface_of
from keyfob.providers import egress
from keyfob.settings import Settings
from keyfob.settings_checks import check_safe
from keyfob.vault import write_secret_file

log = logging.getLogger("keyfob")


def session_keys(settings: Settings) -> list[str]:
    """The cookie-signing key ring, newest last: ``KEYFOB_SESSION_KEYS`` (hosted mode
    requires it, the same for every process), else a 0600 file in the data dir made on
    first start (personal mode: one process)."""
    if settings.session_keys:
        return [k.strip() for k in settings.session_keys.split(",") if k.strip()]
    path = settings.data_dir / "session.key"
    if not path.exists():
        write_secret_file(path, secrets.token_urlsafe(48))
    return [path.read_text("utf-8").strip()]


class KeyRingSessions(SessionMiddleware):
    """Starlette's signed-cookie sessions, verified against every key of the ring and
    signed with the newest (itsdangerous' own key rotation), so a key can be rotated
    without logging everyone out: add the new key last, roll the processes, and drop the
    old one after ``session_max_s``."""

    def __init__(self, app: ASGIApp, /, keys: list[str], **kwargs: Any) -> None:
        super().__init__(app, secret_key=keys[-1], **kwargs)
        self.signer = itsdangerous.TimestampSigner(keys)  # type: ignore[arg-type]


def gateway_routes() -> list[Route]:
    """Every route under /v1 (the gateway and Keyfob's own API for apps)."""
    from keyfob.gateway.routes import KEYFOB_API_ROUTES, ROUTES

    return [*ROUTES, *KEYFOB_API_ROUTES]


def collect_routes() -> list[BaseRoute]:
    from keyfob.health import ROUTES as health_routes
    from keyfob.oauth.routes import ROUTES as oauth_routes
    from keyfob.openapi import PATH as OPENAPI_PATH
    from keyfob.openapi import openapi_json
    from keyfob.web.routes import ROUTES as web_routes
    from keyfob.web.usage_export import ROUTES as export_routes

    return [
        *health_routes,
        Route(OPENAPI_PATH, openapi_json, methods=["GET"]),
        *oauth_routes,
        *gateway_routes(),
        *export_routes,
        *web_routes,
    ]


Endpoint = Callable[[Request], Awaitable[Response]]


class KeyfobApp(Starlette):
    """Starlette, with the gateway's exact paths dispatched before the middleware stack.

    Why: a gateway call otherwise crosses four ``send`` wrappers (server errors,
    sessions, exception handlers twice), the session middleware (the gateway never reads
    the session: apps authenticate with a bearer token) and a router that tries every
    OAuth and web route first, 20-30 us of CPU per call. Only a path and method the
    router would hand to that same route take the shortcut; anything else (another
    method, a trailing slash, a ``root_path``, websockets, lifespan) goes through the
    full stack, so 404s, 405s and redirects are answered exactly as before. The gateway
    endpoints turn every exception into their own JSON error; should one escape anyway
    the answer is the ``ServerErrorMiddleware`` one (a plain-text 500, then re-raised).
    """

    def __init__(self, *args: Any, guard: Guard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast: dict[str, tuple[frozenset[str], Endpoint, Route, str]] = {}
        #: Cross-origin rules for browser apps (``cors/``), set by ``create_app``.
        self.cors: Cors | None = None
        self.guard = guard

    def set_fast_routes(self, routes: Sequence[Route]) -> None:
        fast: dict[str, tuple[frozenset[str], Endpoint, Route, str]] = {}
        for route in routes:
            if route.methods and not route.param_convertors and not self._shadowed(route):
                fast[route.path] = (
                    frozenset(route.methods),
                    route.endpoint,
                    route,
                    surface_of(route.path),
                )
        self._fast = fast

    def _shadowed(self, target: Route) -> bool:
        """Whether the router would send some method of ``target`` to another route."""
        for method in target.methods or ():
            scope: dict[str, Any] = {"type": "http", "path": target.path, "method": method}
            for route in self.router.routes:
                match, _child = route.matches(scope)
                if match is Match.FULL:
                    if route is not target:
                        return True
                    break
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        if (
            guard is not None
            and scope["type"] in ("http", "websocket")
            and "keyfob.guarded" not in scope
        ):
            # Before any route, middleware or fast path (guard.py says why).
            if not guard.host_allowed(scope):
                await wrong_host(scope)(scope, receive, send)
                return
            guard.apply_proxy(scope)
            scope["keyfob.guarded"] = True
        if scope["type"] == "http" and self.cors is not None and "keyfob.cors" not in scope:
            origin = request_origin(scope)  # None unless a browser sent it
            if origin is not None:
                scope["keyfob.cors"] = True  # decided once; the call below dispatches
                await self.cors(self, scope, receive, send, origin)
                return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        if not scope.get("root_path"):
            hit = self._fast.get(scope["path"])
            if hit is not None and scope["method"] in hit[0]:
                scope["app"] = self
                scope["router"] = self.router
                scope["route"] = hit[2]
                scope["endpoint"] = hit[1]
                scope["path_params"] = {}
                surface = hit[3]
                try:
                    response = await hit[1](Request(scope, receive, send))
                except Exception:
                    await PlainTextResponse("Internal Server Error", status_code=500)(
                        scope, receive, send
                    )
                    OBSERVE.done(surface, 500, started)
                    raise
                try:
                    await response(scope, receive, send)
                finally:
                    OBSERVE.done(surface, response.status_code, started)
                return
        # everything else: a request id for its log lines, and its status as sent
        REQUEST_ID.set(secrets.token_hex(8))
        status = [500]

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, watched)
        finally:
            OBSERVE.done(surface_of(scope["path"]), status[0], started)


def wrong_host(scope: Scope) -> Response:
    """421-style refusal of a Host this server does not answer to, in the client's format."""
    path: str = scope.get("path", "")
    message = "this server does not answer to that Host name (see KEYFOB_ALLOWED_HOSTS)"
    if path.startswith("/v1/messages"):
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        }
        return JSONResponse(body, status_code=400)
    if path.startswith("/v1/"):
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_host",
            }
        }
        return JSONResponse(body, status_code=400)
    return PlainTextResponse(message, status_code=400)


def tighten_data_dir(settings: Settings) -> None:
    """Create the data dir 0700, or take group/other access away from an existing one.

    Why warn rather than refuse: the person's keys are already in there; fixing the
    permissions is the safe move, and the warning says something else had loosened them."""
    path = settings.data_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o700)
        log.warning(
            "the data dir %s was readable by others (mode %o); tightened it to 0700",
            path,
            mode,
        )


def app_factory() -> Starlette:
    """The app from the environment alone (``KEYFOB_*``), for process managers:
    ``uvicorn --factory keyfob.server:app_factory`` or gunicorn's uvicorn worker, and the
    workers of ``keyfob serve --workers N``."""
    return create_app(Settings.from_env())


def create_app(
    settings: Settings,
    announce: Callable[[str], None] | None = None,
    *,
    resolve: egress.Resolve | None = None,
) -> Starlette:
    """The ASGI app. ``announce`` is told the one-time setup link when the store has no
    owner yet (``keyfob serve`` prints it in the terminal; nothing logs it). ``resolve``
    replaces the system resolver for upstream names (tests: no real DNS)."""
    check_safe(settings)
    from keyfob import logs

    logs.configure(settings.log_level, settings.log_format)
    tighten_data_dir(settings)
    setup_token = settings.setup_token or secrets.token_urlsafe(32)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from keyfob.deploy import open_checked, ready_to_serve

        kf = await open_checked(settings, serving=True)
        try:
            await ready_to_serve(kf)
        except BaseException:
            await kf.close()
            raise
        heartbeat: Heartbeat | None = None
        # A personal server is the only process on its database: any reservation still
        # open from before this start belongs to a dead process (see allowance docs).
        if settings.mode == "personal":
            charged = await kf.store.metering.reconcile_dead(started_before=time.time())
        else:
            # many processes share the ledger: each releases its own earlier life's and
            # its silent peers' reservations (keyfob/instances.py)
            assert kf.allowance.instance_id is not None
            heartbeat = Heartbeat(kf.store, kf.allowance.instance_id)
            charged = await heartbeat.start()
        if charged:
            log.warning("charged %d unsettled reservations from a previous run", charged)
        from keyfob.accounts.sessions import SessionRules, forget_stale

        await forget_stale(kf.store, SessionRules(settings.session_idle_s, settings.session_max_s))
        if await kf.store.users.owner() is None:
            if settings.mode == "personal" and announce is not None:
                announce(f"{settings.issuer}/setup?token={setup_token}")
            elif settings.mode == "hosted" and announce is None:  # a link never goes to a log
                log.warning("no owner yet: make a one-time setup link with `keyfob setup-link`")
        kf.resolve = resolve
        kf.http = egress.session(
            settings,
            resolve,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.upstream_connect_timeout_s,
                sock_read=settings.upstream_read_timeout_s,
            ),
            limit=0,
            ttl_dns_cache=egress.DNS_CACHE_S,
        )
        # Load the bundled tokenizer now: loading it lazily inside the first stream holds
        # the GIL for half a second and stalls every relay in flight.
        from keyfob.gateway.estimate import count

        await asyncio.to_thread(count, "warm up")
        # Everything loaded so far (tokenizer, price tables, modules) lives as long as the
        # process: move it out of the collector's reach, so a full collection under load
        # walks only what requests allocate (measured: ~20 ms pauses otherwise, in p99).
        gc.collect()
        gc.freeze()
        from keyfob.drain import Drain
        from keyfob.gateway.state import GatewayState

        drain = Drain(settings.drain_timeout_s, GatewayState.of(app).streams.cut_all)
        drain.install()
        app.state.kf_drain = drain
        app.state.kf = kf
        try:
            yield
        finally:
            drain.uninstall()
            limiter = getattr(app.state, "kf_hash_limiter", None)
            if limiter is not None:
                limiter.close()  # the hashing worker process ends with the server
            from keyfob.gateway import overrun
            from keyfob.metering import pending

            await pending.settled(timeout_s=settings.drain_timeout_s)  # none is lost
            await overrun.drain()  # the notices of calls that ended go out first
            await kf.allowance.notifier.drain()
            if heartbeat is not None:
                await heartbeat.stop()
            await kf.close()

    secure = settings.issuer.startswith("https://")
    middleware = [
        Middleware(
            KeyRingSessions,
            keys=session_keys(settings),
            session_cookie="keyfob_session",
            same_site="lax",
            https_only=secure,
            max_age=settings.session_max_s,  # the server-side row decides (web/sessions.py)
        ),
    ]
    from keyfob.web.errors import EXCEPTION_HANDLERS

    app = KeyfobApp(
        routes=collect_routes(),
        middleware=middleware,
        lifespan=lifespan,
        guard=Guard.from_settings(settings),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    app.set_fast_routes(gateway_routes())
    app.cors = Cors(settings)
    app.state.settings = settings
    app.state.setup_token = setup_token
    return app
