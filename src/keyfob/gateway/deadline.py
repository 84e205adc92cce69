"""``asyncio.timeout`` semantics for the upstream's first byte, without a timer per call.

Why: ``asyncio.timeout`` creates a ``Timeout`` and arms (then cancels) an event-loop timer
on every call, 3-4 us of CPU on the hot path. Every first-byte deadline of a process has
the same length, so deadlines expire in the order they were set: the live ones are kept
oldest first (a dict's insertion order) and one timer, armed for the oldest, covers them
all. Entering and leaving is then a dict insert and a pop; the timer fires about once per
timeout length while calls are in flight, expires what is due and re-arms for the next.

What a deadline does when it expires is exactly what ``asyncio.timeout`` does: it cancels
the task, and the awaited call ends in ``TimeoutError`` unless someone else cancelled
the task as well (then the ``CancelledError`` propagates).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

#: A timer may run a little before its time (the loop's clock resolution); an entry due
#: within this margin counts as due, so the timer never re-arms in a tight loop.
_EARLY_S = 1e-3


class _Entry:
    __slots__ = ("cancelling", "expired", "task", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        self.cancelling = task.cancelling()
        self.expired = False


class Deadlines:
    """The live deadlines of one event loop that all have the same length.

    Holds no reference to its loop (only the armed timer does, through the loop's own
    schedule), so a closed loop and its deadlines can be collected."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._live: dict[_Entry, None] = {}
        self._armed = False

    async def run(self, aw: Awaitable[T]) -> T:
        """``async with asyncio.timeout(timeout_s): return await aw``."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        entry = _Entry(task, loop.time() + self.timeout_s)
        live = self._live
        live[entry] = None
        if not self._armed:
            self._armed = True
            loop.call_at(entry.when, self._fire)
        try:
            result = await aw
        except BaseException as exc:
            if not entry.expired:
                live.pop(entry, None)
            # As Timeout.__aexit__: uncancel whenever expired, convert only our own cancel.
            elif task.uncancel() <= entry.cancelling and type(exc) is asyncio.CancelledError:
                raise TimeoutError from exc
            raise
        if entry.expired:
            task.uncancel()
        else:
            live.pop(entry, None)
        return result

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + _EARLY_S
        live = self._live
        while live:
            entry = next(iter(live))
            if entry.when > due:
                loop.call_at(entry.when, self._fire)
                return
            del live[entry]
            entry.expired = True
            entry.task.cancel()
        self._armed = False


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Deadlines]] = (
    weakref.WeakKeyDictionary()
)


def deadlines(timeout_s: float) -> Deadlines:
    """The running loop's deadlines of this length (made on first use)."""
    loop = asyncio.get_running_loop()
    of_loop = _BY_LOOP.get(loop)
    if of_loop is None:
        of_loop = _BY_LOOP[loop] = {}
    found = of_loop.get(timeout_s)
    if found is None:
        found = of_loop[timeout_s] = Deadlines(timeout_s)
    return found
