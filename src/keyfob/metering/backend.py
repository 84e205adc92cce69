"""The one interface every metering backend implements.

Chosen once when the store opens (``store.metering.open_backend``): the serving process
of a SQLite database decides in memory with a journal (``writeback.py``), any other
SQLite opener runs one transaction per call (``sqlite_tx.py``), PostgreSQL calls one
function per call (``postgres.py``). Callers never ask which one they have; the shared
backend tests (``tests/test_metering_backends.py``) run the same assertions on each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keyfob.metering.types import CounterState, Refused, Reserved, ReserveRequest, Settlement


class MeteringBackend(Protocol):
    async def reserve(self, req: ReserveRequest) -> Reserved | Refused:
        """Check every limit of ``req`` and hold the call on each, all or nothing, and
        record its ledger row (durably, before the upstream is called). Raises
        ``CredentialRevoked`` when the token or grant is not live, ``GrantChanged`` when
        the grant moved past ``req.basis``."""
        ...

    def settle_now(
        self, entry_id: str, s: Settlement, now: float
    ) -> tuple[CounterState, ...] | None:
        """``settle`` without suspending when the backend can (None: await ``settle``).

        Why: a settlement done in one synchronous step cannot be interrupted by a
        client's disconnect, so the gateway needs no task and shield around it."""
        ...

    async def settle(
        self, entry_id: str, s: Settlement, now: float | None = None
    ) -> tuple[CounterState, ...]:
        """Turn a reservation into a charge; idempotent (a settled entry is left alone).
        Returns the counters it moved, as they are after the move."""
        ...

    async def reconcile_dead(
        self, *, started_before: float | None = None, instance_ids: Sequence[str] = ()
    ) -> int:
        """Charge the open reservations of dead processes their reservation in full,
        flagged ``needs_reconciliation`` (never dropped, never charged twice)."""
        ...

    async def collect(self, now: float) -> int:
        """Delete time buckets that have left every window."""
        ...

    async def close(self) -> None: ...
