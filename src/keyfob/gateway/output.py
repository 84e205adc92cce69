"""The output bound of a call: what the app asked for, what Keyfob reserves, what it sends.

Invariant 1 needs the three to be one number. The app's limit (the smallest of its limit
fields: ``max_completion_tokens``/``max_tokens`` on chat, ``max_output_tokens`` on
Responses, ``max_tokens`` on Messages) or, when it set none, the model's own maximum
output is the per-choice limit; times ``n`` it is the output side of the worst case. The
reservation may *fit* it lower (``fit_tokens``) when the worst case does not fit what is
left but a smaller limit of at least the grant's floor does. Whatever was reserved is
then written into the upstream body in the provider's dialect
(``providers/output_limit.py``) and enforced on the stream (``OutputGuard``).

Framework-free: plain data in, plain data out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from keyfob.allowance.policy import Policy
from keyfob.gateway.estimate import count
from keyfob.gateway.surface import Plan
from keyfob.pricing.model_limits import ModelLimits
from keyfob.pricing.prices import Price
from keyfob.pricing.usage import TokenUsage
from keyfob.providers import output_limit
from keyfob.settings import Settings

#: Refusals of these limits are in tokens, not micro-USD (fit compares tokens there).
_TOKEN_LIMITS = frozenset({"tokens_per_minute"})
#: Refusals that a smaller output can never help.
_UNFITTABLE = frozenset({"requests_per_minute"})


@dataclass(slots=True)
class Ask:
    """What the app asked for: its per-choice output limit (None: it set none) and ``n``."""

    limit: int | None
    n: int = 1


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def ask_of(endpoint: str, body: dict[str, Any]) -> Ask | None:
    """The app's output request on a surface; None for surfaces without output
    (embeddings). On chat the smaller of ``max_completion_tokens`` and ``max_tokens``
    counts: an upstream may honour either, so the smaller is what the app can rely on."""
    if endpoint == "chat.completions":  # the hot path: a few dict look-ups
        mct, mt = _positive(body.get("max_completion_tokens")), _positive(body.get("max_tokens"))
        limit = mt if mct is None else mct if mt is None else min(mct, mt)
        return Ask(limit, _positive(body.get("n")) or 1)
    if endpoint == "responses":
        return Ask(_positive(body.get("max_output_tokens")))
    if endpoint == "messages":
        return Ask(_positive(body.get("max_tokens")))
    return None


def model_max_output(limits: ModelLimits | None, settings: Settings) -> int:
    """The model's own maximum output (shipped model data, the person's override first:
    ``GatewayState.limits``), else the configured default."""
    if limits is None or not limits.max_output_known:
        return settings.default_max_output_tokens
    return int(limits.max_output_tokens)


@dataclass(slots=True)
class OutputBound:
    """The per-choice limit reserved for (and sent upstream), ``n`` choices, and the
    limit it was fitted down from (None when it was not lowered)."""

    per_choice: int
    n: int = 1
    app_set: bool = False
    lowered_from: int | None = None

    @property
    def tokens(self) -> int:
        return self.per_choice * self.n


def output_bound(ask: Ask | None, limits: ModelLimits | None, settings: Settings) -> OutputBound:
    """The bound to reserve for: the app's own limit, else the model's maximum output."""
    if ask is None:
        return OutputBound(0)
    if ask.limit is not None:
        return OutputBound(ask.limit, ask.n, app_set=True)
    return OutputBound(model_max_output(limits, settings), ask.n)


def may_fit(policy: Policy, out: OutputBound) -> bool:
    """The grant's choice: ``fit`` or ``refuse``; ``auto`` fits when the app set no limit
    (when it did, it asked for that many tokens, and gets a 429 it can act on)."""
    mode = policy.output_limit
    return out.per_choice > 0 and (mode == "fit" or (mode == "auto" and not out.app_set))


def fit_tokens(
    price: Price,
    input_tokens: int,
    out: OutputBound,
    room: int,
    *,
    in_tokens: bool,
    tool_uses: dict[str, int] | None = None,
) -> int:
    """The largest per-choice limit below ``out.per_choice`` whose worst case fits
    ``room`` (micro-USD, or tokens when ``in_tokens``); 0 when even none fits.

    Binary search on the exact cost function (tiered prices included), about 20 cost
    computations, only on the refusal path."""

    def fits(k: int) -> bool:
        if in_tokens:
            return input_tokens + k * out.n <= room
        usage = TokenUsage(input_tokens, k * out.n, tool_uses=tool_uses)
        return price.cost_micro_usd(usage) <= room

    lo, hi = 0, out.per_choice - 1
    if hi < 1 or not fits(0):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def refit(
    policy: Policy,
    price: Price,
    input_tokens: int,
    tool_uses: dict[str, int] | None,
    out: OutputBound,
    key: str,
    room: int,
) -> OutputBound | None:
    """A smaller bound that fits the refusing limit ``key`` with ``room`` left, at least
    the grant's floor; None when the policy or the floor forbids it."""
    if not may_fit(policy, out) or key in _UNFITTABLE:
        return None
    k = fit_tokens(
        price, input_tokens, out, room, in_tokens=key in _TOKEN_LIMITS, tool_uses=tool_uses
    )
    if k < max(1, policy.fit_floor_tokens) or k >= out.per_choice:
        return None
    return OutputBound(k, out.n, out.app_set, out.lowered_from or out.per_choice)


def slack_limit(bound_tokens: int) -> int:
    """Keyfob's count (cl100k) of an output that stopped at ``bound_tokens`` of the
    model's own tokenizer stays below this (tokenizers differ by a few percent on
    ordinary text): past it, the upstream did not stop."""
    return bound_tokens + bound_tokens // 10 + 8


def limit_plan(plan: Plan, adapter: Any, out: OutputBound) -> Plan:
    """The plan with the reserved per-choice limit written into the upstream body, in
    the adapter's dialect (every field that upstream honours)."""
    if out.per_choice <= 0:
        return plan
    body = output_limit.of(adapter)(plan.path, plan.body, out.per_choice)
    if body == plan.body:  # the app's own limit, already in the dialect's fields
        return plan
    return replace(plan, body=body)


#: Counts are at least this many event bytes apart (and 1/8 of the stream so far): a
#: stream with a small bound is not counted at every event (reading the text of every
#: chunk is what the watcher avoids), at the price of a cut that may come this late.
MIN_CHECK_STEP_BYTES = 2048


class OutputGuard:
    """Counts a stream's generated output and says when it passes its bound.

    Why this shape: every token of a byte-level BPE covers at least one byte of text, and
    the text is at most the bytes of the events that carry it, so until the events'
    bytes exceed the bound, the output cannot have: nothing is counted. Past that, the
    new text is counted (cl100k, Keyfob's one offline encoding) and the next count is
    due only when the events could hold enough new tokens to pass the bound, and at
    least ``MIN_CHECK_STEP_BYTES`` (or an eighth of the stream so far) later: a stream
    past its bound is cut within that many event bytes (tokens past the bound are in
    the count the cut charges). A normal stream (about a hundred event bytes per
    token) is counted a handful of times, a short one not at all.

    ``slack`` allows for tokenizers that need fewer tokens than cl100k for the same text
    (an upstream that stopped at its limit must not be cut a few tokens early); what an
    upstream bills past the bound is charged at its real cost in any case."""

    __slots__ = ("bound", "limit", "next_check", "read_upto", "seen_bytes", "tokens")

    def __init__(self, bound_tokens: int) -> None:
        self.bound = bound_tokens
        self.limit = slack_limit(bound_tokens)
        self.seen_bytes = 0
        self.next_check = max(self.limit, MIN_CHECK_STEP_BYTES)
        self.tokens = 0
        self.read_upto = 0

    def passed(self, event_bytes: int, text: Any) -> bool:
        """Add an event of ``event_bytes``; ``text`` is a callable giving the watcher's
        text list (read only when a count is due). True once the output passed."""
        self.seen_bytes += event_bytes
        if self.seen_bytes <= self.next_check:
            return False
        parts: list[str] = text()
        new = "".join(parts[self.read_upto :])
        self.read_upto = len(parts)
        self.tokens += count(new)
        if self.tokens > self.limit:
            return True
        seen = self.seen_bytes
        self.next_check = seen + max(self.limit - self.tokens, MIN_CHECK_STEP_BYTES, seen // 8)
        return False
