"""An upstream billed past the bound Keyfob reserved and sent: record it, tell the person.

The settlement itself already charged the real cost (``Meter.from_usage``/``cut``), so the
windows hold what the provider will bill and the next call is refused until there is
room. This module does the rest, off the request path (a task, as webhooks are): one
``limit_overruns`` row (the provider's mark, the dashboard's flag) and an
``allowance.overrun`` webhook event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from keyfob.allowance.service import Reservation
from keyfob.context import Keyfob
from keyfob.metering.types import Settlement

log = logging.getLogger("keyfob.gateway")

_TASKS: set[asyncio.Task[None]] = set()


class Meter(Protocol):
    """What an overrun report reads of the call's ``meter.Meter`` (a protocol, so this
    module, which the meter calls, does not import it back)."""

    @property
    def kf(self) -> Keyfob: ...
    @property
    def reservation(self) -> Reservation: ...
    @property
    def user_id(self) -> str: ...
    @property
    def provider_id(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def output_bound(self) -> int: ...
    @property
    def was_cut(self) -> bool: ...


def report(meter: Meter, s: Settlement) -> None:
    """Record an overrun of ``meter``'s call settled as ``s`` (fire and forget)."""
    if not meter.user_id:
        return
    kind = "stream_cut" if meter.was_cut else "usage_reported"
    log.warning(
        "upstream ignored the output limit: model %s, %s output tokens for %s reserved (%s)",
        meter.model,
        s.output_tokens,
        meter.output_bound,
        kind,
    )
    try:
        task = asyncio.get_running_loop().create_task(_record(meter, s, kind))
    except RuntimeError:
        return
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _record(meter: Meter, s: Settlement, kind: str) -> None:
    kf, res = meter.kf, meter.reservation
    try:
        await kf.store.overruns.record(
            user_id=meter.user_id,
            grant_id=res.grant_id or None,
            provider_id=meter.provider_id,
            model=meter.model,
            ledger_id=res.entry_id,
            kind=kind,
            reserved_micro_usd=res.amount_micro_usd,
            cost_micro_usd=s.cost_micro_usd,
            output_limit_tokens=meter.output_bound or None,
            output_tokens=s.output_tokens,
        )
    except Exception as exc:  # the ledger row holds the cost; this is the notice
        log.error("recording an overrun failed: %s", type(exc).__name__)
    if res.grant_id:
        await kf.allowance.notifier.overrun(
            res.grant_id,
            entry_id=res.entry_id,
            model=meter.model,
            kind=kind,
            reserved_micro_usd=res.amount_micro_usd,
            cost_micro_usd=s.cost_micro_usd,
            output_limit_tokens=meter.output_bound,
            output_tokens=s.output_tokens,
        )


async def drain() -> None:
    """Wait for the records in flight (tests, shutdown)."""
    while _TASKS:
        await asyncio.gather(*list(_TASKS), return_exceptions=True)
