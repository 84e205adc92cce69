"""A bounded graceful drain: on SIGTERM (or SIGINT) the process stops accepting (uvicorn),
``/readyz`` answers 503 at once so the balancer sends nothing new, streams in flight get
``drain_timeout_s`` to finish, and those still running are then cut by Keyfob itself:
the client gets its surface's end of stream, the upstream connection is closed and the
call is settled like a hang-up (``gateway/relay.py``). uvicorn's own
``timeout_graceful_shutdown`` (a few seconds longer) is the hard stop after that.

Why Keyfob's own cut: uvicorn's timeout cancels the request tasks, which settles them
too (settlement runs in ``finally``), but the client sees a connection torn mid-event;
a cut ends the stream in the client's own format, so its SDK reports a clean end.

The handler is chained in front of whatever handles the signal (uvicorn's, gunicorn's),
so those still do their part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("keyfob")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
CUT_REASON = "the server is shutting down"


class Drain:
    def __init__(self, limit_s: float, cut: Callable[[str], int]) -> None:
        self.limit_s = limit_s
        self.cut = cut
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Chain the handlers (main thread only, where signals are delivered)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous)
        self._previous.clear()
        if self._task is not None:
            self._task.cancel()

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None and not self.draining:
            self._loop.call_soon_threadsafe(self.begin)
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)

    def begin(self) -> None:
        """Start draining: readiness fails now, streams are cut after the limit."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: streams in flight have %g s to finish", self.limit_s)
        self._task = asyncio.ensure_future(self._cut_later())

    async def _cut_later(self) -> None:
        await asyncio.sleep(self.limit_s)
        cut = self.cut(CUT_REASON)
        if cut:
            log.warning("drain limit reached: cut %d stream(s) still in flight", cut)
