"""A process's recent settlements, kept to be applied again after lost connections."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from keyfob.metering.types import Settlement

#: Settlements kept for replay at least this long, and longer when PostgreSQL's WAL
#: writer is configured slower: an asynchronous commit is flushed within three
#: ``wal_writer_delay`` (200 ms by default).
REPLAY_MIN_S = 2.0
#: At most this many settlements are kept (about 20 s of a busy process's calls).
REPLAY_MAX = 50_000


class Replays:
    """The settlements of the last seconds, applied again after connections were lost.

    Why: a settlement commits without waiting for the WAL flush; if PostgreSQL itself
    crashes before the flush, the settlement is gone and its row is still reserved (the
    call stays held at its bound: never an overspend, but money held until someone
    settles it). A crash ends every connection, so a lost connection is the sign: the
    next metering call first settles the recent ones again. Settling is idempotent
    (``keyfob_settle`` moves only a row still reserved), so a replay after a mere network
    blip changes nothing."""

    def __init__(self, keep_s: float = REPLAY_MIN_S) -> None:
        self.keep_s = keep_s
        self._recent: deque[tuple[float, str, Settlement, float]] = deque()
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
        if self.due:
            return  # keep everything until the replay ran
        while self._recent and (
            self._recent[0][0] < at - self.keep_s or len(self._recent) > REPLAY_MAX
        ):
            self._recent.popleft()

    def start(self) -> tuple[int, list[tuple[str, Settlement, float]]]:
        """What to replay now, and the loss count it answers for."""
        return self._losses, [(e, s, now) for _, e, s, now in self._recent]

    def finished(self, losses: int) -> None:
        self._replayed = losses
