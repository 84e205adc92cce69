"""What a process checks before it serves, once: the schema (migrated under the advisory
lock, ``store/migrate.py``), the connection budget (``store/budget.py``), Redis, and, for
a hosted server with no owner yet, a one-time setup link.

Why before serving, with messages: a process that starts and then fails its first
requests (an unreachable database, a pool PostgreSQL cannot hold, Redis down) is found
by a person's failed login, not by the operator; a clear refusal at start is found by
the deployment itself. ``keyfob serve`` runs ``preflight`` before uvicorn starts, and the
app's lifespan runs ``ready_to_serve`` (the app factory has no other start hook).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from keyfob.settings import Settings, SettingsError
from keyfob.shared import shown_url

if TYPE_CHECKING:
    from keyfob.context import Keyfob

log = logging.getLogger("keyfob")


_warned: list[bool] = []  # the no-Redis warning, once per process


class StartRefused(SettingsError):
    """The process cannot serve: the message says what to fix."""


async def open_checked(settings: Settings, *, serving: bool = False) -> Keyfob:
    """``Keyfob.open`` with a database that cannot be reached or migrated refused in words."""
    from keyfob.context import Keyfob

    try:
        return await Keyfob.open(settings, serving=serving)
    except (OSError, ConnectionError) as exc:
        raise StartRefused(
            f"cannot reach the database {shown_url(settings.effective_database_url)}: {exc}"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("asyncpg", "sqlalchemy")):
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise StartRefused(
                f"the database {shown_url(settings.effective_database_url)} refused: "
                f"{type(exc).__name__}: {first}"
            ) from None
        raise


async def ready_to_serve(kf: Keyfob) -> None:
    """The checks every serving process makes once its store is open."""
    from keyfob.store.budget import check_budget

    await check_budget(kf.store.engine, kf.settings)
    if kf.settings.redis_url:
        from keyfob.shared import connect_redis

        kf.redis = await connect_redis(kf.settings.redis_url)
    elif kf.settings.mode == "hosted" and not _warned:
        _warned.append(True)
        log.warning(
            "no KEYFOB_REDIS_URL: login throttles and registration limits are counted per "
            "process, so N processes allow N times the documented limits"
        )


async def preflight(settings: Settings) -> str | None:
    """Run by ``keyfob serve`` before its server starts. Returns a one-time setup link
    when a hosted server has no owner yet (personal mode prints its own at start)."""
    kf = await open_checked(settings)
    try:
        await ready_to_serve(kf)
        if settings.mode == "hosted" and await kf.store.users.owner() is None:
            token = await kf.store.setup_tokens.mint()
            return f"{settings.issuer}/setup?token={token}"
        return None
    finally:
        await kf.close()
