"""Password hashing off the event loop, a bounded number at a time.

Why: an argon2id hash is ~50 ms of one core by design. Computed on the event loop, a
4-client login flood pushed every gateway call behind it (p50 2.6 -> 13.9 ms, max
468 ms). In a worker thread (argon2-cffi releases the GIL while it hashes) the loop keeps
serving; the semaphore keeps a flood from taking every core, and a short queue turns the
rest away at once (the caller answers 503) instead of letting waiters pile up in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class HashingBusy(Exception):
    """More logins are waiting for a hash than the queue holds: try again shortly."""


class HashLimiter:
    def __init__(self, concurrent: int = 1, queue_max: int = 16) -> None:
        self.concurrent = max(1, concurrent)
        self.queue_max = max(0, queue_max)
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # one per event loop (tests)
            self._loop, self._sem = loop, asyncio.Semaphore(self.concurrent)
        return self._sem

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread once a slot is free; HashingBusy when the
        queue is full."""
        sem = self._semaphore()
        if sem.locked() and self._waiting >= self.queue_max:
            raise HashingBusy()
        self._waiting += 1
        try:
            await sem.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            sem.release()
