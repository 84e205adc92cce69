"""One call's reservation and its single settlement, safe against cancellation.

A client may hang up at any await. Settlement therefore runs in its own task, awaited
through ``asyncio.shield``: cancelling the request cancels the wait, not the write, so
every reservation ends in the ledger (invariant 2, "no lost usage").

A call whose usage exceeds its reservation (an upstream that ignored the output limit
Keyfob sent) is charged its *real* cost, not the reservation: the ledger and the windows
must show what the provider will bill, so that the next call is refused until there is
room again. Such a settlement is an overrun: the person is told and the provider marked
(``gateway/overrun.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from keyfob import metrics
from keyfob.allowance.service import Reservation, left_once_settled
from keyfob.context import Keyfob
from keyfob.gateway.output import slack_limit
from keyfob.gateway.overrun import report
from keyfob.gateway.quote import Quote
from keyfob.logs import REQUEST_ID
from keyfob.metering import pending
from keyfob.metering.types import SettledStatus, Settlement, UsageSource
from keyfob.pricing.bounds import fixed_uses
from keyfob.pricing.prices import Price
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import UpstreamError

log = logging.getLogger("keyfob.gateway")


def _task(settling: Coroutine[Any, Any, int], awaited: bool) -> asyncio.Task[int]:
    """``settling`` in a task of its own; marked as awaited by nobody unless
    ``awaited`` (``pending.UNAWAITED``: the backend may hold it back for company)."""
    if awaited:
        return asyncio.ensure_future(settling)
    token = pending.UNAWAITED.set(True)
    try:
        return asyncio.ensure_future(settling)  # the task copies the context now
    finally:
        pending.UNAWAITED.reset(token)


def _done(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("settlement failed: %s", type(task.exception()).__name__)


@dataclass
class Meter:
    kf: Keyfob
    reservation: Reservation
    price: Price
    #: The token bounds reserved for (input, output); 0 output: a surface without any.
    input_bound: int = 0
    output_bound: int = 0
    #: Who to tell and which provider to mark when the upstream breaks the bound.
    user_id: str = ""
    provider_id: str | None = None
    model: str = ""
    #: Set when the stream was cut at its bound (``cut``).
    was_cut: bool = False
    _task: asyncio.Task[int] | None = field(default=None, repr=False)
    #: What was left after a settlement that completed inline (no task needed).
    _left: int | None = field(default=None, repr=False)
    #: The cost the settlement recorded (set when settling starts).
    cost_micro_usd: int | None = None
    #: Server-tool uses that happen for sure (a search model's search): charged as quoted
    #: when the upstream reports no count (``pricing.bounds.fixed_uses``).
    fixed_tool_uses: dict[str, int] | None = None

    def __post_init__(self) -> None:
        metrics.reservation_held(self.reservation.amount_micro_usd)
        REQUEST_ID.set(self.reservation.entry_id)  # the x-keyfob-request-id, in the logs

    @classmethod
    def of(cls, kf: Keyfob, reservation: Reservation, q: Quote) -> Meter:
        r = q.resolved
        return cls(
            kf,
            reservation,
            q.price,
            q.input_tokens,
            q.output.tokens,
            r.provider.user_id,
            r.provider.id,
            r.canonical,
            fixed_tool_uses=fixed_uses(q.tool_uses),
        )

    @property
    def settled(self) -> bool:
        return self._task is not None or self._left is not None

    async def settle(self, s: Settlement) -> int:
        """Settle once (later calls wait for the first); returns what is left afterwards.

        On SQLite the settlement usually completes synchronously (``settle_now``): with
        no suspension point nothing can cancel it half-way, so no task or shield is
        needed. Otherwise (a busy database, PostgreSQL) it runs in its own task."""
        if self._task is not None:
            pending.hurry()  # started by ``settle_soon``: someone waits for it now
        left = self._start(s, awaited=True)
        if self._task is None:
            return left
        return await asyncio.shield(self._task)

    def settle_soon(self, s: Settlement) -> int:
        """Start settling once and return what will be left afterwards, without waiting
        for the backend's write (``metering.pending``: reads, refusals and shutdown in
        this process wait for it). Why: on PostgreSQL the write is a round trip, and an
        answer that waited for it paid that round trip on every call (c=1 latency).

        Exact when the settlement completed inline (SQLite); otherwise what the
        reservation left plus what this call did not use, as the backend will find it
        unless other calls of the grant moved the counters meanwhile."""
        return self._start(s, awaited=False)

    def _start(self, s: Settlement, *, awaited: bool) -> int:
        if self._left is not None:
            return self._left
        if self._task is None:
            self.cost_micro_usd = s.cost_micro_usd
            metrics.reservation_settled(
                self.reservation.amount_micro_usd,
                self.model,
                s.status,
                s.cost_micro_usd,
                s.upstream_status,
            )
            if s.cost_micro_usd > self.reservation.amount_micro_usd or self.was_cut:
                report(self, s)
            try:
                left = self.kf.allowance.settle_now(self.reservation, s)
            except Exception as exc:
                log.error("settlement failed: %s", type(exc).__name__)
                raise
            if left is not None:
                self._left = left
                return left
            self._task = _task(self.kf.allowance.settle(self.reservation, s), awaited)
            self._task.add_done_callback(_done)
            pending.track(self._task, self.user_id)  # the person the call spent for
        return left_once_settled(self.reservation, self.cost_micro_usd or 0)

    def from_usage(
        self,
        usage: TokenUsage,
        *,
        status: SettledStatus,
        source: UsageSource,
        upstream_status: int | None,
    ) -> Settlement:
        """A settlement for known (or estimated) usage, at its real cost.

        Above the reservation, the upstream broke the bound: the real cost is charged
        (the provider bills it) and the row says so. Keyfob's own count (``estimated``)
        is cl100k, not the model's tokenizer: an output within the stream cut's slack
        of the bound is taken to be the bound (the upstream stopped at the limit it was
        sent), so a compliant upstream is never charged past its reservation."""
        if usage.tool_uses is None and self.fixed_tool_uses:
            usage = replace(usage, tool_uses=dict(self.fixed_tool_uses))
        cost = self.price.cost_micro_usd(usage)
        flagged, error = False, None
        if cost > self.reservation.amount_micro_usd:
            if source == "estimated" and self._within_slack(usage):
                cost = self.reservation.amount_micro_usd
            else:
                flagged = source != "upstream"  # exact when the upstream reported it
                error = (
                    f"usage above the reservation ({usage.output_tokens} output tokens, "
                    f"{self.output_bound} reserved): the upstream ignored the output "
                    "limit; charged its real cost"
                )
        return Settlement(
            status=status,
            cost_micro_usd=cost,
            usage_source=source,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cache_read_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            needs_reconciliation=flagged,
            upstream_status=upstream_status,
            error=error,
        )

    def _within_slack(self, usage: TokenUsage) -> bool:
        return usage.input_tokens <= self.input_bound and usage.output_tokens <= slack_limit(
            self.output_bound
        )

    def cut(self, counted: TokenUsage, upstream_status: int | None) -> Settlement:
        """A stream cut at its bound: the upstream billed at least what was relayed (and
        maybe what was in flight), so the larger of that count and the reservation is
        charged, flagged for reconciliation with the provider's bill."""
        self.was_cut = True
        cost = max(self.price.cost_micro_usd(counted), self.reservation.amount_micro_usd)
        return Settlement(
            status="estimated",
            cost_micro_usd=cost,
            usage_source="estimated",
            input_tokens=counted.input_tokens,
            output_tokens=counted.output_tokens,
            needs_reconciliation=True,
            upstream_status=upstream_status,
            error=(
                f"the upstream wrote past the output limit ({counted.output_tokens} output "
                f"tokens counted, {self.output_bound} sent): stream cut, counted cost charged"
            ),
        )

    def charged(self, error: str, upstream_status: int | None) -> Settlement:
        """Usage unknown after the upstream may have worked: charge the reservation."""
        return Settlement(
            status="charged_reservation",
            cost_micro_usd=self.reservation.amount_micro_usd,
            usage_source="reservation",
            needs_reconciliation=True,
            upstream_status=upstream_status,
            error=error,
        )

    def unanswered(self, exc: UpstreamError, note: str = "") -> Settlement:
        """The upstream request failed before any answer: its reservation is charged when
        the upstream may have worked (it was reached: a timeout), nothing otherwise."""
        if exc.reached:
            return self.charged(f"{exc}{note}", None)
        return self.failed(f"{exc}{note}", None)

    @staticmethod
    def failed(error: str, upstream_status: int | None) -> Settlement:
        """The upstream never worked for this call: nothing is charged."""
        return Settlement(
            status="failed",
            cost_micro_usd=0,
            usage_source="none",
            upstream_status=upstream_status,
            error=error,
        )
