"""Password hashing off the event loop, a bounded number at a time.

Why: an argon2id hash is ~50 ms of one core by design. Computed on the event loop, a
4-client login flood pushed every gateway call behind it (p50 2.6 -> 13.9 ms, max
468 ms). Keyfob hashes in a worker *process* at the lowest CPU priority (SCHED_IDLE,
nice 19): the event loop keeps serving, and when the server has only one core the
kernel gives it to the loop whenever the loop has work (measured: a hashing *thread* in
the server's own process doubled the loop's p50 on a shared core, GIL handoffs
included; a separate idle-priority process moved it ~10%; bench/login_flood.py). The
semaphore keeps a flood to one hash at a time, and a short queue turns the rest away at
once (the caller answers 503) instead of letting waiters pile up in memory. Should the
worker process be unavailable, hashing falls back to a thread of the same priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")


#: Niceness of hashing threads: the lowest priority, so the event loop always wins a core.
HASH_NICENESS = 19


def _lower_priority() -> None:
    """Worker initializer: this thread (the worker process's, or the fallback thread)
    gets the lowest CPU priority (Linux: a thread id is a valid ``who``). Lowering one's
    own priority needs no privilege; where unsupported, hashing runs at normal priority."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


class HashingBusy(Exception):
    """More logins are waiting for a hash than the queue holds: try again shortly."""


class HashLimiter:
    def __init__(self, concurrent: int = 1, queue_max: int = 16, *, processes: bool = True) -> None:
        self.concurrent = max(1, concurrent)
        self.queue_max = max(0, queue_max)
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._pool: Executor | None = None
        #: ``processes=False``: hash in a low-priority thread (functions that cannot be
        #: pickled, tests); the server uses a worker process.
        self._threads = not processes

    def _executor(self) -> Executor:
        if self._pool is None:
            if self._threads:
                self._pool = ThreadPoolExecutor(
                    self.concurrent, thread_name_prefix="keyfob-hash", initializer=_lower_priority
                )
            else:
                # spawn: a fresh interpreter, not a fork of a server with threads running
                self._pool = ProcessPoolExecutor(
                    self.concurrent,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_lower_priority,
                )
        return self._pool

    def close(self) -> None:
        """Stop the worker (server shutdown); a later ``run`` starts a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

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
        loop = asyncio.get_running_loop()
        try:
            try:
                return await loop.run_in_executor(self._executor(), fn, *args)
            except (BrokenProcessPool, OSError):
                self.close()
                self._threads = True  # no worker process here: a low-priority thread
                return await loop.run_in_executor(self._executor(), fn, *args)
        finally:
            sem.release()
