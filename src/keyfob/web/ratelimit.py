"""Login throttling: per username+address failures with exponential back-off, in memory.

Passwords are argon2-hashed, which already makes each guess slow; this stops an online
guesser from trying many passwords quickly. It is per process (good enough for personal
mode; a hosted deployment also rate-limits at its proxy).
"""

from __future__ import annotations

import time

FREE_ATTEMPTS = 5
MAX_DELAY_S = 300.0
MAX_ENTRIES = 10_000


class LoginThrottle:
    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}

    def retry_after(self, username: str, address: str, now: float | None = None) -> float:
        """Seconds until the next attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic() if now is None else now
        count, last = self._failures.get((username.lower(), address), (0, 0.0))
        if count < FREE_ATTEMPTS:
            return 0.0
        delay = min(MAX_DELAY_S, 2.0 ** (count - FREE_ATTEMPTS + 1))
        return max(0.0, last + delay - now)

    def failed(self, username: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= MAX_ENTRIES:
            cutoff = now - MAX_DELAY_S * 2
            self._failures = {k: v for k, v in self._failures.items() if v[1] > cutoff}
            if len(self._failures) >= MAX_ENTRIES:
                self._failures.clear()
        key = (username.lower(), address)
        count, _ = self._failures.get(key, (0, 0.0))
        self._failures[key] = (count + 1, now)

    def succeeded(self, username: str, address: str) -> None:
        self._failures.pop((username.lower(), address), None)


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
