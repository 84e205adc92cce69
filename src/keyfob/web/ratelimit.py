"""Login throttling: failures per account+address *and* per account, with exponential
back-off, in memory.

Passwords are argon2-hashed, which already makes each guess slow; this stops an online
guesser from trying many passwords quickly. The address is the one ``guard.py`` trusts
(never a client's own ``X-Forwarded-For``). The per-account count catches a guesser that
does own many addresses; it allows more failures before backing off, so someone else
mistyping from one address does not lock the owner out, and its delay is capped.
Per process (good enough for personal mode; a hosted deployment also rate-limits at its
proxy).
"""

from __future__ import annotations

import time
from typing import Any

FREE_ATTEMPTS = 5
ACCOUNT_FREE_ATTEMPTS = 20
MAX_DELAY_S = 300.0
MAX_ENTRIES = 10_000

_Key = tuple[str, str]


def _delay(count: int, free: int) -> float:
    if count < free:
        return 0.0
    return min(MAX_DELAY_S, 2.0 ** min(count - free + 1, 16))


class LoginThrottle:
    def __init__(self) -> None:
        self._failures: dict[_Key, tuple[int, float]] = {}

    def retry_after(self, username: str, address: str, now: float | None = None) -> float:
        """Seconds until the next attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic() if now is None else now
        name = username.lower()
        count, last = self._failures.get((name, address or "unknown"), (0, 0.0))
        wait = max(0.0, last + _delay(count, FREE_ATTEMPTS) - now)
        count, last = self._failures.get((name, ""), (0, 0.0))
        return max(wait, last + _delay(count, ACCOUNT_FREE_ATTEMPTS) - now)

    def failed(self, username: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= MAX_ENTRIES:
            cutoff = now - MAX_DELAY_S * 2
            self._failures = {k: v for k, v in self._failures.items() if v[1] > cutoff}
            if len(self._failures) >= MAX_ENTRIES:
                self._failures.clear()
        name = username.lower()
        # ("name", "") is the account's own count: no address is the empty string.
        for key in ((name, address or "unknown"), (name, "")):
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, username: str, address: str) -> None:
        name = username.lower()
        self._failures.pop((name, address or "unknown"), None)
        self._failures.pop((name, ""), None)


class WindowLimiter:
    """At most ``limit`` events per key in each window of ``window_s`` seconds.

    For public endpoints that create rows (client registration, device codes): cheap to
    call, so a flood is refused before it reaches the store. Per process, in memory."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, now: float | None = None) -> float:
        """Count one event; returns 0 when allowed, else seconds until the window resets."""
        now = time.monotonic() if now is None else now
        if len(self._counts) >= MAX_ENTRIES:
            self._counts = {
                k: v for k, v in self._counts.items() if now - v[0] < self.window_s
            } or {}
            if len(self._counts) >= MAX_ENTRIES:
                self._counts.clear()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        if count >= self.limit:
            return max(0.0, start + self.window_s - now)
        self._counts[key] = (start, count + 1)
        return 0.0


def login_throttle(request: Any) -> LoginThrottle:
    """The app's login throttle (one per application, so each server counts its own);
    the login page and the password change share it."""
    found = getattr(request.app.state, "kf_login_throttle", None)
    if not isinstance(found, LoginThrottle):
        found = LoginThrottle()
        request.app.state.kf_login_throttle = found
    return found
