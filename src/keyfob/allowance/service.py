"""Reserve the worst case before the upstream is called; settle the actual afterwards.

This is the only way money leaves an allowance. A call whose worst case does not fit
what is left is refused before any byte goes upstream, so concurrent calls can never
overspend: the store's conditional update decides who gets the last cent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keyfob.allowance.windows import Window, window_for
from keyfob.store import Store
from keyfob.store.metering import CredentialRevoked, Refused, Settlement, WindowLimit
from keyfob.store.records import Grant, WindowState
from keyfob.tokens import new_id

__all__ = ["AllowanceExhausted", "AllowanceService", "CredentialRevoked", "Reservation"]


class AllowanceExhausted(Exception):
    """The worst case of a call does not fit what is left in a window."""

    def __init__(self, window: Window, state: WindowState, needed_micro_usd: int) -> None:
        self.window = window
        self.state = state
        self.needed_micro_usd = needed_micro_usd
        super().__init__(f"allowance window {window.key} exhausted")


@dataclass(frozen=True)
class Reservation:
    entry_id: str
    amount_micro_usd: int
    window: Window
    #: What is left in the window after this reservation (before it settles).
    left_micro_usd: int


class AllowanceService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def current_window(self, grant: Grant, now: float | None = None) -> Window:
        return window_for(grant.window, time.time() if now is None else now, grant.timezone)

    async def remaining(self, grant: Grant) -> tuple[Window, WindowState]:
        window = self.current_window(grant)
        state = await self.store.metering.window(grant.id, window.key)
        if state.cap_micro_usd == 0 and state.spent_micro_usd == 0:
            state = WindowState(window.key, grant.cap_micro_usd, 0, 0)
        return window, state

    async def reserve(self, *, grant: Grant, token_hash: str, provider_id: str | None,
                      model: str, endpoint: str, streamed: bool,
                      amount_micro_usd: int) -> Reservation:
        """Reserve ``amount_micro_usd`` or raise AllowanceExhausted / CredentialRevoked."""
        now = time.time()
        window = self.current_window(grant, now)
        entry_id = new_id()
        result = await self.store.metering.reserve(
            entry_id=entry_id, token_hash=token_hash, grant_id=grant.id, user_id=grant.user_id,
            client_id=grant.client_id, provider_id=provider_id, model=model, endpoint=endpoint,
            streamed=streamed, amount_micro_usd=amount_micro_usd,
            windows=[WindowLimit(window.key, grant.cap_micro_usd)], now=now)
        if isinstance(result, Refused):
            raise AllowanceExhausted(window, result.window, amount_micro_usd)
        left = min(s.left_micro_usd for s in result.windows)
        return Reservation(entry_id, amount_micro_usd, window, left)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> int:
        """Settle and return what is left in the window afterwards (micro-USD)."""
        states = await self.store.metering.settle(reservation.entry_id, settlement)
        if not states:
            return reservation.left_micro_usd
        return min(s.left_micro_usd for s in states)
