"""A process's recent reservations and settlements, kept to be applied again after lost
connections."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from keyfob.metering.types import Settlement

#: Kept for replay at least this long, and longer when PostgreSQL's WAL writer is
#: configured slower: an asynchronous commit is flushed within three
#: ``wal_writer_delay`` (200 ms by default).
REPLAY_MIN_S = 2.0
#: At most this many of each are kept (about 10 s of a busy process's calls).
REPLAY_MAX = 50_000


class Replays:
    """The writes of the last seconds whose commit did not wait for the WAL flush,
    applied again after connections were lost.

    Why: a settlement commits without waiting for the flush, and so does a common-case
    reservation under ``db_reservation_durability = commit``; if PostgreSQL itself
    crashes before the flush, the write is gone. A lost settlement leaves its row
    reserved (the call held at its bound: never an overspend, but money held until
    someone settles it); a lost reservation leaves a call upstream with no row and no
    hold. A crash ends every connection, so a lost connection is the sign: the process
    puts its recent reservations back first (``keyfob_restore_one``: only a row the
    ledger lacks), then settles its recent settlements again, before its next decision.
    Both are idempotent, so a replay after a mere network blip changes nothing."""

    def __init__(self, keep_s: float = REPLAY_MIN_S) -> None:
        self.keep_s = keep_s
        self._recent: deque[tuple[float, str, Settlement, float]] = deque()
        #: (when, keyfob_reserve_one's arguments) of reservations committed unflushed.
        self._reserved: deque[tuple[float, list[Any]]] = deque()
        #: Bumped by every loss; a replay clears ``due`` only if none happened meanwhile.
        self._losses = 0
        self._replayed = 0
        self.lock = asyncio.Lock()

    @property
    def due(self) -> bool:
        return self._replayed != self._losses

    def lost(self) -> None:
        self._losses += 1

    def add(self, entry_id: str, s: Settlement, now: float) -> None:
        at = time.monotonic()
        self._recent.append((at, entry_id, s, now))
        self._trim(self._recent, at)

    def reserved(self, args: list[Any]) -> None:
        """A reservation committed without the flush (``keyfob_reserve_one``'s args)."""
        at = time.monotonic()
        self._reserved.append((at, args))
        self._trim(self._reserved, at)

    def _trim(self, kept: deque[Any], at: float) -> None:
        if self.due:
            return  # keep everything until the replay ran
        while kept and (kept[0][0] < at - self.keep_s or len(kept) > REPLAY_MAX):
            kept.popleft()

    def start(self) -> tuple[int, list[list[Any]], list[tuple[str, Settlement, float]]]:
        """What to replay now (reservations to put back, settlements to apply again),
        and the loss count it answers for."""
        return (
            self._losses,
            [args for _, args in self._reserved],
            [(e, s, now) for _, e, s, now in self._recent],
        )

    def finished(self, losses: int) -> None:
        self._replayed = losses
