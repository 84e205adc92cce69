"""What the consent page shows about models and money: each model's price (or "free"
for the person's own hardware, or "no price", which cannot be metered and so cannot be
chosen), the cheapest model as the safe default, and a one-line summary of the answer."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from keyfob.context import Keyfob
from keyfob.money import usd_summary
from keyfob.pricing.prices import UnknownPrice, price_for
from keyfob.web.provider_pages import per_mtok

#: Consent pre-fills this cap (USD) when the app suggests none and the person set none.
DEFAULT_CAP_USD = "5"


@dataclass(frozen=True)
class ModelChoice:
    id: str
    provider_id: str
    #: "free", "$0.15 in · $0.60 out per 1M tokens", "tiered price", or "" (no price).
    price: str
    priced: bool
    free: bool
    #: For "cheapest first": input + output USD per million tokens (None: unknown).
    rank: Decimal | None


async def model_choices(kf: Keyfob, user_id: str) -> list[ModelChoice]:
    out: list[ModelChoice] = []
    for p in await kf.store.providers.list(user_id):
        overrides = await kf.store.providers.prices(p.id)
        for m in p.models:
            model_id = f"{p.name}/{m}"
            try:
                price = price_for(
                    m, overrides=overrides, is_local=p.is_local, kind=p.kind, base_url=p.base_url
                )
            except UnknownPrice:
                out.append(ModelChoice(model_id, p.id, "", False, False, None))
                continue
            if price.source == "local":
                out.append(ModelChoice(model_id, p.id, "free", True, True, Decimal(0)))
            elif price.model_price is not None:
                out.append(ModelChoice(model_id, p.id, "tiered price", True, False, None))
            else:
                rank = price.input_per_mtok + price.output_per_mtok
                text = (
                    f"{per_mtok(price.input_per_mtok)} in · "
                    f"{per_mtok(price.output_per_mtok)} out per 1M tokens"
                )
                out.append(ModelChoice(model_id, p.id, text, True, rank == 0, rank))
    return out


def cheapest(choices: list[ModelChoice]) -> list[str]:
    """The one cheapest priced model (the first of equals), as the default choice."""
    ranked = [c for c in choices if c.priced and c.rank is not None]
    if not ranked:
        ranked = [c for c in choices if c.priced]
        return [ranked[0].id] if ranked else []
    return [min(ranked, key=lambda c: c.rank or Decimal(0)).id]


def summary(app_name: str, cap_micro_usd: int | None, window: str, models: int) -> str:
    """ "Story Writer may spend up to $5.00 per month on these 2 models, as filled in
    below; ...".

    The page works without JavaScript (and its CSP allows none), so this line cannot
    follow the form as the person edits it: it says that it describes the form as filled
    in, and that what they choose there is what applies. Each period's option says when
    it resets, so the choice itself needs no summary."""
    what = f"these {models} models" if models != 1 else "this model"
    cap = f"up to {usd_summary(cap_micro_usd)}" if cap_micro_usd is not None else "what you set"
    return (
        f"{app_name} may spend {cap} per {window} on {what}, as filled in below; "
        "what you choose there is what applies, and you can change or revoke it at any time."
    )
