"""Where the login throttles and the per-address limits keep their counts: in this
process's memory (``ratelimit.py``, personal mode and single processes) or in Redis,
shared by every process of a hosted deployment.

Why Redis for these and not for money: a throttle that each of N processes keeps on its
own allows N times the documented rate behind a round-robin balancer (70 registrations
through three processes: 60 accepted against 20 an hour), yet losing these counts (a
Redis restart) only forgets some failed logins. Money stays in PostgreSQL.

Both backends have one async interface, so the endpoints do not know which one runs;
each Redis operation is one round trip (a Lua script where a read and a write must not
interleave).

When Redis does not answer (down, restarting, a network split), each limit falls back to
this process's own memory (``FallbackWindow``, ``FallbackThrottle``): still enforced, but
per process (behind N processes, up to N times the documented rate) until Redis answers
again, when the shared counts are used again. Logins and registrations keep working, and
a warning is logged (at most every ``WARN_EVERY_S``). Failing closed instead would turn a
Redis outage into nobody being able to sign in, for limits whose loss only forgets some
failed attempts. Clocks: Redis keys expire by Redis's clock; back-off times compare wall
clocks of the processes, which NTP keeps within milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Protocol

from starlette.requests import Request

from keyfob.web.ratelimit import (
    ACCOUNT_FREE_ATTEMPTS,
    FREE_ATTEMPTS,
    MAX_DELAY_S,
    LoginThrottle,
    WindowLimiter,
    _delay,
)


class WindowBackend(Protocol):
    async def hit(self, key: str) -> float:
        """Count one event; 0 when allowed, else seconds until the window frees."""


class ThrottleBackend(Protocol):
    async def retry_after(self, username: str, address: str) -> float: ...
    async def failed(self, username: str, address: str) -> None: ...
    async def succeeded(self, username: str, address: str) -> None: ...


class LocalWindow:
    def __init__(self, limit: int, window_s: float) -> None:
        self.inner = WindowLimiter(limit, window_s)

    async def hit(self, key: str) -> float:
        return self.inner.hit(key)


class LocalThrottle:
    def __init__(self) -> None:
        self.inner = LoginThrottle()

    async def retry_after(self, username: str, address: str) -> float:
        return self.inner.retry_after(username, address)

    async def failed(self, username: str, address: str) -> None:
        self.inner.failed(username, address)

    async def succeeded(self, username: str, address: str) -> None:
        self.inner.succeeded(username, address)


log = logging.getLogger("keyfob.limits")

#: A Redis outage is logged at most this often (seconds).
WARN_EVERY_S = 30.0
_warned_at = [0.0]


def _redis_down(exc: BaseException) -> None:
    now = time.monotonic()
    if now - _warned_at[0] >= WARN_EVERY_S:
        _warned_at[0] = now
        log.warning(
            "Redis does not answer (%s): login throttles and per-address limits are kept "
            "per process until it does",
            type(exc).__name__,
        )


def _unavailable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class FallbackWindow:
    """Redis's shared window, or this process's own while Redis does not answer."""

    def __init__(self, shared: WindowBackend, local: WindowBackend) -> None:
        self.shared, self.local = shared, local

    async def hit(self, key: str) -> float:
        try:
            return await self.shared.hit(key)
        except _unavailable() as exc:
            _redis_down(exc)
            return await self.local.hit(key)


class FallbackThrottle:
    """Redis's shared throttle, or this process's own while Redis does not answer."""

    def __init__(self, shared: ThrottleBackend, local: ThrottleBackend) -> None:
        self.shared, self.local = shared, local

    async def retry_after(self, username: str, address: str) -> float:
        try:
            return await self.shared.retry_after(username, address)
        except _unavailable() as exc:
            _redis_down(exc)
            return await self.local.retry_after(username, address)

    async def failed(self, username: str, address: str) -> None:
        await self.local.failed(username, address)  # counted here too: the fallback's memory
        try:
            await self.shared.failed(username, address)
        except _unavailable() as exc:
            _redis_down(exc)

    async def succeeded(self, username: str, address: str) -> None:
        await self.local.succeeded(username, address)
        try:
            await self.shared.succeeded(username, address)
        except _unavailable() as exc:
            _redis_down(exc)


def _key(prefix: str, *parts: str) -> str:
    """Counts are keyed by a hash: no username or address is stored in Redis as such."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()[:32]
    return f"{prefix}limits:{parts[0]}:{digest}"


#: INCR within a window that starts at the key's first event; refused events do not
#: count. Returns 0 (allowed) or the milliseconds left in the window.
_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  local left = redis.call('PTTL', KEYS[1])
  if left < 1 then left = 1 end
  return left
end
return 0
"""

#: One failure for both counts (account+address, account): count + 1, last = now.
_FAILED = """
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'count', 1)
  redis.call('HSET', KEYS[i], 'last', ARGV[1])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""


class RedisWindow:
    def __init__(self, redis: Any, prefix: str, name: str, limit: int, window_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.name = name
        self.limit = limit
        self.window_ms = int(window_s * 1000)
        self._script = redis.register_script(_WINDOW)

    async def hit(self, key: str) -> float:
        left_ms = await self._script(
            keys=[_key(self.prefix, self.name, key)], args=[self.window_ms, self.limit]
        )
        return int(left_ms) / 1000.0


class RedisThrottle:
    def __init__(self, redis: Any, prefix: str, name: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.name = name
        self._failed = redis.register_script(_FAILED)

    def _keys(self, username: str, address: str) -> list[str]:
        name = username.lower()
        return [
            _key(self.prefix, self.name, name, address or "unknown"),
            _key(self.prefix, self.name + "-account", name),
        ]

    async def retry_after(self, username: str, address: str) -> float:
        pair, account = self._keys(username, address)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(pair, "count", "last")
        pipe.hmget(account, "count", "last")
        (c1, l1), (c2, l2) = await pipe.execute()
        now = time.time()
        wait = 0.0
        for count, last, free in ((c1, l1, FREE_ATTEMPTS), (c2, l2, ACCOUNT_FREE_ATTEMPTS)):
            if count is not None and last is not None:
                wait = max(wait, float(last) + _delay(int(count), free) - now)
        return max(0.0, wait)

    async def failed(self, username: str, address: str) -> None:
        await self._failed(
            keys=self._keys(username, address), args=[repr(time.time()), int(MAX_DELAY_S * 2)]
        )

    async def succeeded(self, username: str, address: str) -> None:
        await self.redis.delete(*self._keys(username, address))


def _cached(request: Request, name: str, make: Any) -> Any:
    store: dict[str, Any] | None = getattr(request.app.state, "kf_limit_backends", None)
    if store is None:
        store = request.app.state.kf_limit_backends = {}
    found = store.get(name)
    if found is None:
        found = store[name] = make()
    return found


def window_limiter(request: Request, name: str, limit: int, window_s: float) -> WindowBackend:
    """The app's limiter ``name``: Redis when the process has it, else in memory."""
    kf = request.app.state.kf
    if kf.redis is not None:
        prefix = kf.settings.redis_prefix
        return _cached(  # type: ignore[no-any-return]
            request,
            name,
            lambda: FallbackWindow(
                RedisWindow(kf.redis, prefix, name, limit, window_s), LocalWindow(limit, window_s)
            ),
        )
    return _cached(request, name, lambda: LocalWindow(limit, window_s))  # type: ignore[no-any-return]


def throttle(request: Request, name: str = "login") -> ThrottleBackend:
    """The app's failure throttle ``name`` (``login`` is shared by the login page and
    the password change)."""
    kf = request.app.state.kf
    if kf.redis is not None:
        prefix = kf.settings.redis_prefix
        return _cached(  # type: ignore[no-any-return]
            request,
            name,
            lambda: FallbackThrottle(RedisThrottle(kf.redis, prefix, name), LocalThrottle()),
        )
    return _cached(request, name, LocalThrottle)  # type: ignore[no-any-return]
