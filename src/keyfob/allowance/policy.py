"""What a person allows an app: spending limits, rates, a per-call ceiling, the wallet,
and what happens when a limit is reached. Stored as JSON on the grant.

Every limit is checked on the call's *worst case* before the upstream is called, so the
policy can only ever refuse, hold or downgrade a call early, never after money is spent.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

CALENDAR_PERIODS = ("day", "week", "month")
OnExhausted = Literal["block", "wait", "downgrade"]
#: When a call's worst case does not fit: lower its output limit (``fit``), refuse it
#: (``refuse``), or fit only when the app set no limit of its own (``auto``).
OutputLimitMode = Literal["auto", "fit", "refuse"]
OUTPUT_LIMIT_MODES = ("auto", "fit", "refuse")
#: The smallest output limit ``fit`` lowers a call to, unless the grant says otherwise.
DEFAULT_FIT_FLOOR_TOKENS = 256
MAX_WAIT_S = 300.0
#: Models tried after the requested one fails upstream (gateway/fallback.py).
MAX_FALLBACK_CHAIN = 8


class PolicyError(ValueError):
    """A policy a person (or an app's suggestion) wrote that Keyfob cannot enforce."""


@dataclass(frozen=True)
class SpendLimit:
    """A cap on spend per window: a calendar period in the person's time zone, or a
    rolling number of seconds (5 hours, 7 days...). ``model`` restricts it to one model."""

    period: str
    cap_micro_usd: int
    seconds: int | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.period == "rolling":
            if not isinstance(self.seconds, int) or not 60 <= self.seconds <= 366 * 86400:
                raise PolicyError("a rolling window lasts 60 s to 366 days")
        elif self.period not in CALENDAR_PERIODS:
            raise PolicyError(f"unknown window {self.period!r}; use day, week, month or rolling")
        if not isinstance(self.cap_micro_usd, int) or not 0 <= self.cap_micro_usd <= 10**15:
            raise PolicyError("a cap is a non-negative amount of micro-USD")

    @property
    def label(self) -> str:
        span = self.period
        if self.period == "rolling" and self.seconds is not None:
            span = f"rolling {_span(self.seconds)}"
        return f"{span} on {self.model}" if self.model else span


def _span(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


@dataclass(frozen=True)
class Policy:
    limits: tuple[SpendLimit, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    per_call_ceiling_micro_usd: int | None = None
    #: Draw every call from the person's prepaid wallet as well.
    use_wallet: bool = False
    on_exhausted: OnExhausted = "block"
    #: How long ``wait`` may hold a call before it blocks after all.
    wait_max_s: float = 30.0
    #: The canonical model id served instead under ``downgrade``.
    fallback_model: str | None = None
    #: Told when a window passes 50, 80 and 100 percent.
    webhook_url: str | None = None
    #: Canonical ids tried in turn when the requested model's upstream fails before
    #: answering (refused, timed out, 429, 5xx); each must also be in the grant.
    fallback_chain: tuple[str, ...] = ()
    #: Fit or refuse a call whose worst case does not fit (gateway/output.py).
    output_limit: OutputLimitMode = "auto"
    #: ``fit`` never lowers the output limit below this many tokens.
    fit_floor_tokens: int = DEFAULT_FIT_FLOOR_TOKENS
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "per_call_ceiling_micro_usd"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise PolicyError(f"{name} must be a non-negative integer")
        if self.on_exhausted not in ("block", "wait", "downgrade"):
            raise PolicyError("on_exhausted is block, wait or downgrade")
        if not 0 <= float(self.wait_max_s) <= MAX_WAIT_S:
            raise PolicyError(f"wait_max_s is 0 to {MAX_WAIT_S:.0f} seconds")
        if self.on_exhausted == "downgrade" and not self.fallback_model:
            raise PolicyError("downgrade needs a fallback model")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("https://", "http://")
        ):
            raise PolicyError("a webhook URL is http(s)")
        _check_chain(self.fallback_chain)
        if self.output_limit not in OUTPUT_LIMIT_MODES:
            raise PolicyError("output_limit is auto, fit or refuse")
        floor = self.fit_floor_tokens
        if not isinstance(floor, int) or isinstance(floor, bool) or not 1 <= floor <= 10**6:
            raise PolicyError("fit_floor_tokens is 1 to 1,000,000 tokens")

    @classmethod
    def monthly(cls, cap_micro_usd: int) -> Policy:
        return cls(limits=(SpendLimit("month", cap_micro_usd),))

    def primary_limit(self, window: str | None = None) -> SpendLimit | None:
        """The grant-wide calendar limit the consent and limits pages show and change: the
        one of ``window`` (the grant's own), else the first."""
        candidates = [
            lim for lim in self.limits if lim.model is None and lim.period in CALENDAR_PERIODS
        ]
        for lim in candidates:
            if lim.period == window:
                return lim
        return candidates[0] if candidates else None

    def with_changes(
        self, primary: SpendLimit | None = None, *, old_window: str | None = None, **fields: Any
    ) -> Policy:
        """This policy as an edit leaves it, the one way every editor (``keyfob apps
        policy``, the limits page, the consent page) changes a policy: ``fields`` replaced,
        then ``primary``, a grant-wide calendar limit, put in place of the primary limit
        (``primary_limit(old_window)``; first when there is none), the only one of its
        period. Everything not named is kept; the result is checked like any policy
        (``PolicyError``)."""
        unknown = set(fields) - set(self.__dataclass_fields__)
        if unknown:
            raise PolicyError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **fields) if fields else self
        if primary is None:
            return new
        if primary.model is not None or primary.period not in CALENDAR_PERIODS:
            raise PolicyError(f"the window is one of {', '.join(CALENDAR_PERIODS)}")
        old = new.primary_limit(old_window)
        limits = list(new.limits)
        if old is None:
            limits.insert(0, primary)
        else:
            limits[limits.index(old)] = primary
        # one grant-wide limit per calendar period: the one just set wins
        kept = [
            lim
            for lim in limits
            if lim is primary
            or not (lim.model is None and lim.period == primary.period and lim.seconds is None)
        ]
        return dataclasses.replace(new, limits=tuple(kept))

    @property
    def primary_cap_micro_usd(self) -> int:
        """The cap shown first (the tightest of the grant-wide limits)."""
        caps = [lim.cap_micro_usd for lim in self.limits if lim.model is None]
        return min(caps) if caps else 0

    def to_json(self) -> str:
        data = asdict(self)
        data["limits"] = [
            {k: v for k, v in asdict(lim).items() if v is not None} for lim in self.limits
        ]
        data.pop("extra")
        if not self.fallback_chain:
            data.pop("fallback_chain")
        if self.output_limit == "auto":  # defaults stay out: stored policies keep their text
            data.pop("output_limit")
        if self.fit_floor_tokens == DEFAULT_FIT_FLOOR_TOKENS:
            data.pop("fit_floor_tokens")
        return json.dumps({k: v for k, v in data.items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise PolicyError("a policy is a JSON object")
            limits = tuple(SpendLimit(**lim) for lim in data.pop("limits", []))
            known = {f for f in cls.__dataclass_fields__ if f not in ("limits", "extra")}
            unknown = set(data) - known
            if unknown:
                raise PolicyError(f"unknown policy fields: {', '.join(sorted(unknown))}")
            chain = data.pop("fallback_chain", [])
            if not isinstance(chain, list):
                raise PolicyError("fallback_chain is a list of canonical model ids")
            return cls(limits=limits, fallback_chain=tuple(chain), **data)
        except (TypeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"malformed policy: {exc}") from None


def _check_chain(chain: object) -> None:
    if not isinstance(chain, tuple):
        raise PolicyError("fallback_chain is a list of canonical model ids")
    if len(chain) > MAX_FALLBACK_CHAIN:
        raise PolicyError(f"a fallback chain has at most {MAX_FALLBACK_CHAIN} models")
    for model in chain:
        provider, _, name = model.partition("/") if isinstance(model, str) else ("", "", "")
        if not provider or not name or len(model) > 255 or model != model.strip():
            raise PolicyError(f"fallback chain entries are PROVIDER/MODEL ids: {model!r}")
    if len(set(chain)) != len(chain):
        raise PolicyError("a fallback chain names each model once")


def parse_duration(text: str) -> int:
    """'90s', '30m', '5h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise PolicyError(f"a duration is a number and s, m, h or d: {text!r}")
    return int(text[:-1]) * units[text[-1]]
