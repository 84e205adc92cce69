"""Redis: what the processes of a hosted deployment share that is not money (login
throttles, registration limits; ``web/limit_backends.py``). Money stays in PostgreSQL.

Why check at start: a wrong URL would otherwise surface as every login failing."""

from __future__ import annotations

from typing import Any

from keyfob.settings import SettingsError

CONNECT_TIMEOUT_S = 3.0


def shown_url(url: str) -> str:
    """A database or Redis URL with its password hidden (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


async def connect_redis(url: str) -> Any:
    """A connected ``redis.asyncio.Redis``, or SettingsError naming the unreachable URL."""
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise SettingsError(f"cannot reach Redis at {shown_url(url)}: {exc}") from None
    return client
