"""Settlements this process has started and not yet finished.

Why: a gateway call answers its client as soon as its settlement is *decided* (the cost
and what is left are known from the reservation and the usage), not when the backend
has written it: on PostgreSQL that write is a round trip, and waiting for it was one of
the two round trips on every call's path (docs/BENCHMARKS.md, "Hosted mode: where the
time goes"). A settlement is then a task of its own, and three places must see it done:

- a read in this process (usage pages, the allowance API, exports: ``store/metering/
  reads.py``), so a client that reads its usage after an answer sees the call;
- a reservation about to be refused (``allowance/service.py``), so a settlement still on
  its way cannot make a sequential client's next call look over its cap;
- the server's shutdown (``server.py``), so no settlement is lost with the event loop.

A process that dies with a settlement in flight loses nothing: its reservation is in the
ledger, and the reaper charges it in full, flagged (invariant 2), as for a call that was
still running.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from typing import Any, Protocol

log = logging.getLogger("keyfob.metering")

_TASKS: set[asyncio.Future[Any]] = set()
#: The person each settlement's call spent for (a refusal waits only for those).
_WHOSE: dict[asyncio.Future[Any], str] = {}

#: True in a settlement's task that nobody awaits (``Meter.settle_soon``): a backend may
#: hold its write back briefly to send it with a later round trip.
UNAWAITED: contextvars.ContextVar[bool] = contextvars.ContextVar("unawaited", default=False)


class Hurries(Protocol):
    def hurry(self) -> None:
        """Send at once what waits to be sent with a later round trip."""


#: Backends holding settlements back for company (``store/metering/pg_batch.py``).
_HOLDERS: weakref.WeakSet[Hurries] = weakref.WeakSet()


def hurry_with(holder: Hurries) -> None:
    """``holder.hurry()`` is called whenever someone waits for the settlements."""
    _HOLDERS.add(holder)


def track(task: asyncio.Future[Any], user_id: str = "") -> None:
    """Keep ``task`` (a settlement of a call spending for ``user_id``) until it ends (the
    reference also keeps it alive)."""
    _TASKS.add(task)
    if user_id:
        _WHOSE[task] = user_id
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _TASKS.discard(task)
    _WHOSE.pop(task, None)


def hurry() -> None:
    """Have every holder send what it holds back now."""
    for holder in list(_HOLDERS):
        holder.hurry()


def unfinished(user_id: str | None = None) -> bool:
    """Settlements still on their way (of calls spending for ``user_id``, when given)."""
    return bool(_unfinished(user_id))


def _unfinished(user_id: str | None) -> list[asyncio.Future[Any]]:
    return [t for t in _TASKS if not t.done() and (user_id is None or _WHOSE.get(t) == user_id)]


async def settled(timeout_s: float = 5.0, user_id: str | None = None) -> None:
    """Wait for the settlements started before this call (not for later ones; only those
    of calls spending for ``user_id``, when given: what a refusal of theirs could free);
    a settlement that fails is logged where it runs, and one slower than ``timeout_s``
    leaves the caller reading a little before it (never raises)."""
    me = asyncio.current_task()
    if me in _TASKS:
        return  # a settlement reading (its notices) never waits for the others
    todo = _unfinished(user_id)
    if not todo:
        return
    hurry()
    _done, late = await asyncio.wait(todo, timeout=timeout_s)
    if late:
        log.warning("%d settlement(s) still on their way after %g s", len(late), timeout_s)
