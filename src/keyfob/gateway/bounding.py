"""The worst case of a call for the model that serves it (``pricing.bounds``, per model).

An input bound depends on the serving model: its image rule, its context window (content
billed by reference, server-tool passes) and its per-use tool prices. A call may end up
served by another model than the one asked for: the grant's ``downgrade`` model when the
allowance refuses the first, or a model of its fallback chain (``fallback.py`` bounds each
candidate afresh). The bound reserved first therefore covers the downgrade model too.
"""

from __future__ import annotations

from typing import Any

from keyfob.allowance.service import policy_of
from keyfob.context import Keyfob
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.models import Resolved, resolve
from keyfob.gateway.state import GatewayState
from keyfob.gateway.surface import Surface
from keyfob.pricing.usage import TokenUsage
from keyfob.store.records import Grant


async def bound_for(
    kf: Keyfob, gw: GatewayState, surface: Surface, body: dict[str, Any], r: Resolved
) -> TokenUsage:
    """The call's bounds when ``r`` serves it (a 400 when nothing bounds them)."""
    limits = await gw.limits(kf, r.provider, r.upstream_model)
    return surface.bounds(body, kf.settings, r.upstream_model, limits)


def widest(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    """A bound covering both: the larger of each count, every tool use of either."""
    uses = dict(a.tool_uses or {})
    for name, n in (b.tool_uses or {}).items():
        uses[name] = max(uses.get(name, 0), n)
    return TokenUsage(
        max(a.input_tokens, b.input_tokens),
        max(a.output_tokens, b.output_tokens),
        tool_uses=uses or None,
    )


async def call_bound(
    kf: Keyfob,
    gw: GatewayState,
    grant: Grant,
    surface: Surface,
    body: dict[str, Any],
    r: Resolved,
) -> TokenUsage:
    """The bound for ``r``, widened to cover the grant's downgrade model."""
    bound = await bound_for(kf, gw, surface, body, r)
    if grant.policy_json is None or '"fallback_model"' not in grant.policy_json:
        return bound  # no downgrade model: no parsing on the hot path
    other = policy_of(grant).fallback_model
    if other is None or other == r.canonical:
        return bound
    try:
        o = resolve(grant, await gw.providers_of(kf, grant.user_id), other, allow_any=True)
    except GatewayError:
        return bound  # not servable: the downgrade will not happen (metered.py refuses)
    return widest(bound, await bound_for(kf, gw, surface, body, o))
