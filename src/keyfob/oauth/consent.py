"""What an app asks for and what the person allows: Keyfob's consent extension.

An authorization request (or a device authorization request) may *suggest* an allowance
with three extra parameters; the person sees the suggestion and decides:

- ``keyfob_cap_usd``: a USD amount such as ``5`` or ``2.50``;
- ``keyfob_window``: ``day``, ``week`` or ``month`` (calendar, in the person's time zone);
- ``keyfob_models``: space-separated canonical model ids (``provider/model``) to pre-select;
- ``keyfob_expires_in``: seconds until the grant ends by itself (60 s to 366 days), as
  OpenRouter's ``expiresAt`` and Pollinations' ``expiry`` let an app ask for a key that
  ends; the person may shorten, lengthen or remove it.

The person's answer becomes (or updates) the grant's allowance policy; only the primary
spending limit (cap and window) and the models change, every other policy field the person
set elsewhere (rates, per-model caps, wallet, webhook...) is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from keyfob import money
from keyfob.allowance.policy import CALENDAR_PERIODS
from keyfob.store.apps import UNCHANGED, Unchanged

CAP_PARAMETER = "keyfob_cap_usd"
WINDOW_PARAMETER = "keyfob_window"
MODELS_PARAMETER = "keyfob_models"
EXPIRES_PARAMETER = "keyfob_expires_in"
MIN_EXPIRES_IN_S = 60
MAX_EXPIRES_IN_S = 366 * 86400
#: What the consent page offers (seconds; 0 = never), besides what the app asked for.
EXPIRY_CHOICES = (
    (0, "never"),
    (3600, "in 1 hour"),
    (86400, "in 1 day"),
    (7 * 86400, "in 7 days"),
    (30 * 86400, "in 30 days"),
    (90 * 86400, "in 90 days"),
    (365 * 86400, "in 1 year"),
)
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
    expires_in_s: int | None = None

    def as_params(self) -> list[tuple[str, str]]:
        pairs = []
        if self.cap_micro_usd is not None:
            pairs.append((CAP_PARAMETER, money.format_usd(self.cap_micro_usd)))
        if self.window is not None:
            pairs.append((WINDOW_PARAMETER, self.window))
        if self.models:
            pairs.append((MODELS_PARAMETER, " ".join(self.models)))
        if self.expires_in_s is not None:
            pairs.append((EXPIRES_PARAMETER, str(self.expires_in_s)))
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
    return Suggestion(cap, window, models, parse_expires_in(params.get(EXPIRES_PARAMETER)))


def parse_expires_in(text: str | None) -> int | None:
    """``keyfob_expires_in``: whole seconds, 60 s to 366 days (ValueError otherwise)."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise ValueError(f"{EXPIRES_PARAMETER} must be a number of seconds")
    seconds = int(text)
    if not MIN_EXPIRES_IN_S <= seconds <= MAX_EXPIRES_IN_S:
        raise ValueError(
            f"{EXPIRES_PARAMETER} must be between {MIN_EXPIRES_IN_S} seconds and "
            f"{MAX_EXPIRES_IN_S // 86400} days"
        )
    return seconds


#: The consent form's expiry value that keeps an existing grant's end as it is.
KEEP_EXPIRY = "keep"


def chosen_expiry(text: str, now: float) -> float | Unchanged | str | None:
    """When the grant the person approves ends, from the consent form's value: an
    instant, None (never), ``UNCHANGED`` (keep the existing grant's), or a message when
    the value is not one of those."""
    text = text.strip()
    if text == KEEP_EXPIRY:
        return UNCHANGED
    if text == "0":
        return None
    try:
        seconds = parse_expires_in(text)
    except ValueError as exc:
        return str(exc).replace(EXPIRES_PARAMETER, "the end of access")
    return None if seconds is None else now + seconds


def expiry_choices(suggested_s: int | None) -> list[tuple[int, str]]:
    """The consent page's choices, with the app's own ask among them."""
    choices = list(EXPIRY_CHOICES)
    if suggested_s is not None and all(s != suggested_s for s, _label in choices):
        choices.append((suggested_s, f"in {_duration(suggested_s)} (asked by the app)"))
        choices.sort(key=lambda c: (c[0] == 0, c[0]))
    return choices


def _duration(seconds: int) -> str:
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % unit == 0:
            n = seconds // unit
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


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
