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

import itertools
import time
from typing import Any

FREE_ATTEMPTS = 5
ACCOUNT_FREE_ATTEMPTS = 20
MAX_DELAY_S = 300.0
MAX_ENTRIES = 10_000
#: Per-account counts kept at most (a flood of made-up usernames is bounded too).
MAX_ACCOUNTS = 10_000

_Key = tuple[str, str]


def _delay(count: int, free: int) -> float:
    if count < free:
        return 0.0
    return min(MAX_DELAY_S, 2.0 ** min(count - free + 1, 16))


def _without_oldest(table: dict[Any, Any]) -> dict[Any, Any]:
    """``table`` (oldest first) without its oldest tenth: eviction in batches, so a flood
    costs one copy per thousand new entries, not one per entry."""
    return dict(itertools.islice(table.items(), MAX_ENTRIES // 10, None))


class LoginThrottle:
    """Two tables, bounded separately, so filling one cannot empty the other.

    Per account+address counts are many (an attacker chooses both); when full, the least
    recently failed go first. Per account counts are what holds a guesser with many
    addresses: a flood of failures from fresh addresses (or made-up usernames) must not
    flush the owner's, so when full the ones that have ended go first, then the smallest
    (a made-up name has one failure; an account under attack has many)."""

    def __init__(self) -> None:
        #: (account, address) -> (failures, last failure); oldest failure first.
        self._failures: dict[_Key, tuple[int, float]] = {}
        #: account -> (failures, last failure).
        self._accounts: dict[str, tuple[int, float]] = {}

    def retry_after(self, username: str, address: str, now: float | None = None) -> float:
        """Seconds until the next attempt is allowed (0 when it is allowed now)."""
        now = time.monotonic() if now is None else now
        name = username.lower()
        count, last = self._failures.get((name, address or "unknown"), (0, 0.0))
        wait = max(0.0, last + _delay(count, FREE_ATTEMPTS) - now)
        count, last = self._accounts.get(name, (0, 0.0))
        return max(wait, last + _delay(count, ACCOUNT_FREE_ATTEMPTS) - now)

    def failed(self, username: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        name = username.lower()
        key = (name, address or "unknown")
        count, _ = self._failures.pop(key, (0, 0.0))  # re-inserted last: newest
        if len(self._failures) >= MAX_ENTRIES:
            self._failures = _without_oldest(self._failures)
        self._failures[key] = (count + 1, now)
        count, _ = self._accounts.get(name, (0, 0.0))
        if name not in self._accounts and len(self._accounts) >= MAX_ACCOUNTS:
            self._evict_accounts(now)
        self._accounts[name] = (count + 1, now)

    def _evict_accounts(self, now: float) -> None:
        """Make room for one account: those whose back-off ended long ago, else the
        tenth with the fewest failures (oldest first among equals)."""
        cutoff = now - MAX_DELAY_S * 2
        kept = {k: v for k, v in self._accounts.items() if v[1] > cutoff}
        if len(kept) >= MAX_ACCOUNTS:
            by_weight = sorted(kept.items(), key=lambda kv: (kv[1][0], kv[1][1]))
            for k, _v in by_weight[: max(1, MAX_ACCOUNTS // 10)]:
                del kept[k]
        self._accounts = kept

    def succeeded(self, username: str, address: str) -> None:
        name = username.lower()
        self._failures.pop((name, address or "unknown"), None)
        self._accounts.pop(name, None)


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
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window_s:  # a new window: it moves to the end (newest)
            self._counts.pop(key, None)
            start, count = now, 0
        if count >= self.limit:
            return max(0.0, start + self.window_s - now)
        if key not in self._counts and len(self._counts) >= MAX_ENTRIES:
            # windows that ended first, then the oldest (never all at once: a flood
            # from new addresses must not reset the counts of the ones at their limit)
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window_s}
            if len(self._counts) >= MAX_ENTRIES:
                self._counts = _without_oldest(self._counts)
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
