"""Probes and metrics: ``/livez`` (the process answers), ``/readyz`` (it can serve:
PostgreSQL or SQLite answers, Redis answers when configured, the schema is at this
Keyfob's head, not draining), ``/healthz`` (the database answers; kept for existing
checks), ``/metrics`` (Prometheus; hosted mode: only with ``KEYFOB_METRICS_TOKEN``).

Why readiness checks the database each time rather than trusting the start: a database
dropped, restarted or unreachable must take the process out of the balancer, and an
``ok`` that only means "the lifespan ran once" hides exactly that (issue 12).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from keyfob.context import Keyfob

CHECK_TIMEOUT_S = 2.0


def _kf(request: Request) -> Keyfob | None:
    return getattr(request.app.state, "kf", None)


async def _database(kf: Keyfob) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with kf.store.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


async def _redis(kf: Keyfob) -> str:
    if kf.redis is None:
        return "not configured"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await kf.redis.ping()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


async def _schema(request: Request, kf: Keyfob) -> str:
    """``head`` or ``ahead`` are ready; once seen, not asked again (the code's head
    cannot move under a running process)."""
    if getattr(request.app.state, "kf_schema_ok", False):
        return "head"
    from keyfob.store.migrate import current_revision, schema_state

    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            state = schema_state(await current_revision(kf.store.engine))
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    if state in ("head", "ahead"):
        request.app.state.kf_schema_ok = True
    return state


async def livez(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    kf = _kf(request)
    if kf is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    drain = getattr(request.app.state, "kf_drain", None)
    draining = bool(drain is not None and drain.draining)
    database, redis = await asyncio.gather(_database(kf), _redis(kf))
    schema = await _schema(request, kf) if database == "ok" else "unknown"
    checks: dict[str, Any] = {
        "database": database,
        "redis": redis,
        "schema": schema,
        "draining": draining,
    }
    # Redis away does not make a process unready: money is in PostgreSQL and the limits
    # kept in Redis fall back to each process's memory (web/limit_backends.py); pulling
    # every process out of the balancer would turn that into an outage
    if redis not in ("ok", "not configured"):
        checks["redis"] = f"{redis}; limits kept per process"
    ready = database == "ok" and schema in ("head", "ahead") and not draining
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def healthz(request: Request) -> Response:
    kf = _kf(request)
    if kf is None:
        return PlainTextResponse("starting", status_code=503)
    database = await _database(kf)
    if database != "ok":
        return PlainTextResponse(f"database {database}", status_code=503)
    return PlainTextResponse("ok")


async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.metrics:
        return PlainTextResponse("Not Found", status_code=404)
    # in every mode a token: the labels name people's providers and models, and a
    # personal server may have more than one person (or other local users)
    token = settings.metrics_token
    if not token:
        return PlainTextResponse("Not Found", status_code=404)
    given = request.headers.get("authorization", "").encode("utf-8", "replace")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        return PlainTextResponse(
            "metrics need KEYFOB_METRICS_TOKEN as a bearer token",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    from keyfob.metrics import exposition

    body, content_type = exposition()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})


ROUTES = [
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
