"""What an app asks for and what the person allows: Keyfob's consent extension.

An authorization request (or a device authorization request) may *suggest* an allowance
with three extra parameters; the person sees the suggestion and decides:

- ``keyfob_cap_usd``: a USD amount such as ``5`` or ``2.50``;
- ``keyfob_window``: ``day``, ``week`` or ``month`` (calendar, in the person's time zone);
- ``keyfob_models``: space-separated canonical model ids (``provider/model``) to pre-select.

The person's answer becomes (or updates) the grant's allowance policy; only the primary
spending limit (cap and window) and the models change, every other policy field the person
set elsewhere (rates, per-model caps, wallet, webhook...) is kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from keyfob import money
from keyfob.allowance.policy import CALENDAR_PERIODS, Policy, SpendLimit

CAP_PARAMETER = "keyfob_cap_usd"
WINDOW_PARAMETER = "keyfob_window"
MODELS_PARAMETER = "keyfob_models"
WINDOWS = CALENDAR_PERIODS
MAX_MODELS = 50
MAX_MODEL_ID = 255
_MODEL_ID = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class Suggestion:
    """The allowance an app suggests (every part optional)."""

    cap_micro_usd: int | None = None
    window: str | None = None
    models: tuple[str, ...] = ()

    def as_params(self) -> list[tuple[str, str]]:
        pairs = []
        if self.cap_micro_usd is not None:
            pairs.append((CAP_PARAMETER, money.format_usd(self.cap_micro_usd)))
        if self.window is not None:
            pairs.append((WINDOW_PARAMETER, self.window))
        if self.models:
            pairs.append((MODELS_PARAMETER, " ".join(self.models)))
        return pairs


def parse_suggestion(params: Mapping[str, str]) -> Suggestion:
    """Read the keyfob_* parameters; raises ValueError with a message for the app."""
    cap: int | None = None
    if CAP_PARAMETER in params:
        try:
            cap = money.parse_usd(params[CAP_PARAMETER])
        except ValueError:
            raise ValueError(f"{CAP_PARAMETER} must be a USD amount such as 5 or 2.50") from None
    window = params.get(WINDOW_PARAMETER)
    if window is not None and window not in WINDOWS:
        raise ValueError(f"{WINDOW_PARAMETER} must be one of {', '.join(WINDOWS)}")
    models: tuple[str, ...] = ()
    if MODELS_PARAMETER in params:
        ids = params[MODELS_PARAMETER].split(" ")
        if len(ids) > MAX_MODELS or any(
            not m or len(m) > MAX_MODEL_ID or not _MODEL_ID.match(m) for m in ids
        ):
            raise ValueError(
                f"{MODELS_PARAMETER} must be at most {MAX_MODELS} model ids separated by spaces"
            )
        models = tuple(dict.fromkeys(ids))
    return Suggestion(cap, window, models)


@dataclass(frozen=True)
class ConsentAsk:
    """Everything the consent page shows about one request, whatever the grant type."""

    client_id: str
    client_name: str
    #: Where the person will be sent back (a host), or None for the device flow.
    redirect_host: str | None
    #: How the app is known: registered (by the owner), dynamic (self-registered),
    #: metadata_document (its client_id is an https URL Keyfob fetched).
    client_kind: str
    suggestion: Suggestion


def primary_limit(policy: Policy, window: str | None = None) -> SpendLimit | None:
    """The grant-wide calendar limit the consent and edit pages show and change."""
    candidates = [
        lim for lim in policy.limits if lim.model is None and lim.period in CALENDAR_PERIODS
    ]
    for lim in candidates:
        if lim.period == window:
            return lim
    return candidates[0] if candidates else None


def with_primary(
    policy: Policy, cap_micro_usd: int, window: str, old_window: str | None = None
) -> Policy:
    """``policy`` with its primary limit set to ``cap_micro_usd`` per ``window``."""
    if window not in WINDOWS:
        raise ValueError(f"the window is one of {', '.join(WINDOWS)}")
    new = SpendLimit(window, cap_micro_usd)
    old = primary_limit(policy, old_window)
    limits = list(policy.limits)
    if old is None:
        limits.insert(0, new)
    else:
        limits[limits.index(old)] = new
    # one grant-wide limit per calendar period: the one just set wins
    kept = [
        lim
        for lim in limits
        if lim is new or not (lim.model is None and lim.period == window and lim.seconds is None)
    ]
    return dataclasses.replace(policy, limits=tuple(kept))
