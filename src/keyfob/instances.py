"""Each serving process's heartbeat, and the reaper of dead processes' reservations.

Why: in hosted mode any number of processes share the ledger, so no process can assume
that an open reservation is dead at its start (personal mode can: one server owns its
database). Each process writes its instance id on its reservations and beats every
``HEARTBEAT_S`` seconds; every process, on each beat, charges the open reservations of
instances silent for ``DEAD_AFTER_S`` (in full, flagged for reconciliation, as every dead
call is: invariant 2) and forgets them. A process restarted with the same id
(``KEYFOB_INSTANCE_ID``, stable in systemd units or Kubernetes stateful sets) releases its
own previous reservations at once.

A process that is alive but stalls longer than ``DEAD_AFTER_S`` (which the generous bound
makes unlikely) has its calls in flight charged their reservation: their own settlement
then finds the row settled and changes nothing, so usage is never lost nor counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time

from keyfob.store import Store

log = logging.getLogger("keyfob.instances")

HEARTBEAT_S = 2.0
DEAD_AFTER_S = 15.0
#: Time buckets that left every window are deleted about this often.
COLLECT_EVERY_S = 60.0


def new_instance_id() -> str:
    """An id unique to this process's life: host, process id and a random part."""
    host = socket.gethostname()[:32] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class Heartbeat:
    def __init__(self, store: Store, instance_id: str) -> None:
        self.store = store
        self.instance_id = instance_id
        self._task: asyncio.Task[None] | None = None
        self._collected_at = 0.0

    async def start(self) -> int:
        """Beat once, release what an earlier life of this id left held, and keep
        beating; returns how many reservations were released."""
        await self.store.instances.beat(self.instance_id, time.time(), started=True)
        released = await self.store.metering.reconcile_dead(instance_ids=[self.instance_id])
        self._task = asyncio.get_running_loop().create_task(self._run())
        return released

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.tick(time.time())
            except Exception as exc:  # the database may be away for a while: beat again
                log.warning("heartbeat failed: %s", type(exc).__name__)

    async def tick(self, now: float) -> int:
        """One beat: record this process alive, release the reservations of silent
        ones, and now and then delete expired time buckets."""
        await self.store.instances.beat(self.instance_id, now)
        dead = await self.store.instances.silent_since(now - DEAD_AFTER_S, but=self.instance_id)
        released = 0
        if dead:
            released = await self.store.metering.reconcile_dead(instance_ids=dead)
            await self.store.instances.forget(dead)
            if released:
                log.warning("charged %d reservations of %d stopped processes", released, len(dead))
        if now - self._collected_at > COLLECT_EVERY_S:
            self._collected_at = now
            await self.store.metering.collect(now)
        return released

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.store.instances.forget([self.instance_id])
