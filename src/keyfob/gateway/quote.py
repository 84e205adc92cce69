"""The worst case of a call on one model: what is reserved before that model is called.

A quote is the serving model's price times the call's bounds: the input bound of the
surface and the output the app asked for (or, when it set none, the model's maximum
output), times ``n``, plus the per-use fees of server-side tools. The allowance may fit
the output down when a limit refuses the full worst case (``Quote.refitter``); the quote
then holds the smaller limit, which is the one sent upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keyfob.allowance.service import AllowanceExhausted, policy_of
from keyfob.context import Keyfob
from keyfob.gateway.models import Resolved
from keyfob.gateway.output import Ask, OutputBound, output_bound, refit
from keyfob.gateway.state import GatewayState
from keyfob.pricing.prices import Price
from keyfob.pricing.usage import TokenUsage
from keyfob.store.records import Grant

#: The allowance's ``refit`` hook: a smaller (amount, tokens bound) that fits, or None.
Refit = Callable[[AllowanceExhausted], tuple[int, int | None] | None]


#: Not frozen, for speed: a frozen dataclass sets each field through
#: ``object.__setattr__`` (measured 4-6x slower to build), and this one is built
#: on every gateway call. Treat it as immutable all the same (``refitter`` aside).
@dataclass(slots=True)
class Quote:
    """Everything priced for one candidate model: what to reserve before calling it."""

    resolved: Resolved
    price: Price
    worst_micro_usd: int
    tokens_bound: int
    #: The output limit reserved for, and sent upstream (0 tokens: no output, embeddings).
    output: OutputBound
    input_tokens: int = 0
    #: Server-side tool uses bounded for (their per-use fees are part of the worst case).
    tool_uses: dict[str, int] | None = None

    def refitter(self, grant: Grant) -> Refit | None:
        """The allowance's ``refit`` hook: a smaller output limit that fits the limit that
        refused, when the grant's policy allows fitting (None: a surface without output)."""
        if not self.output.per_choice:
            return None
        policy = policy_of(grant)

        def hook(exc: AllowanceExhausted) -> tuple[int, int | None] | None:
            st = exc.state
            room = max(0, st.cap_micro_usd - st.spent_micro_usd - st.reserved_micro_usd)
            new = refit(
                policy,
                self.price,
                self.input_tokens,
                self.tool_uses,
                self.output,
                st.window_key,
                room,
            )
            if new is None:
                return None
            self.output = new
            usage = TokenUsage(self.input_tokens, new.tokens, tool_uses=self.tool_uses)
            self.worst_micro_usd = self.price.cost_micro_usd(usage)
            self.tokens_bound = self.input_tokens + new.tokens
            return self.worst_micro_usd, self.tokens_bound

        return hook


async def quote(
    kf: Keyfob, gw: GatewayState, r: Resolved, bound: TokenUsage, ask: Ask | None
) -> Quote:
    """Price the worst case: the surface's input bound and the output the app asked for
    (or, when it set none, the model's own maximum output), times ``n``."""
    price = await gw.price(kf, r.provider, r.upstream_model)
    limits = await gw.limits(kf, r.provider, r.upstream_model) if ask is not None else None
    out = output_bound(ask, limits, kf.settings)
    worst = (
        TokenUsage(bound.input_tokens, out.tokens, tool_uses=bound.tool_uses)
        if ask is not None
        else bound
    )
    return Quote(
        r,
        price,
        price.cost_micro_usd(worst),
        worst.input_tokens + worst.output_tokens,
        out,
        worst.input_tokens,
        bound.tool_uses,
    )
