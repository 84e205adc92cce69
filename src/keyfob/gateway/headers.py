"""The ``x-keyfob-*`` headers that tell an app what a call cost and what is left."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from keyfob.money import format_usd

REQUEST_ID = "x-keyfob-request-id"
COST = "x-keyfob-cost-usd"
RESERVED = "x-keyfob-reserved-usd"
LEFT = "x-keyfob-allowance-left-usd"
RESETS_AT = "x-keyfob-allowance-resets-at"
#: Set when the person's ``downgrade`` policy served its fallback model instead.
DOWNGRADED_TO = "x-keyfob-downgraded-to"
#: Set when the grant's fallback chain served the call: the model that failed first.
FALLBACK_FROM = "x-keyfob-fallback-from"
#: Set when the grant's ``fit`` policy lowered the output limit sent upstream: the limit
#: the app asked for (or the model's maximum, when it set none).
MAX_TOKENS_LOWERED_FROM = "x-keyfob-max-tokens-lowered-from"
#: SSE comment emitted just before ``data: [DONE]`` with a stream's exact cost.
STREAM_COST_COMMENT = "keyfob-cost-usd"


@functools.lru_cache(maxsize=256)
def iso_utc(ts: float) -> str:
    """Memoised: the same few reset instants (one per window) go out on every call."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keyfob_headers(
    *,
    entry_id: str | None = None,
    cost_micro_usd: int | None = None,
    reserved_micro_usd: int | None = None,
    left_micro_usd: int | None = None,
    resets_at: float | None = None,
) -> dict[str, str]:
    """Whatever is known at the time; unknown values are left out rather than guessed."""
    h: dict[str, str] = {}
    if entry_id is not None:
        h[REQUEST_ID] = entry_id
    if cost_micro_usd is not None:
        h[COST] = format_usd(cost_micro_usd)
    if reserved_micro_usd is not None:
        h[RESERVED] = format_usd(reserved_micro_usd)
    if left_micro_usd is not None:
        h[LEFT] = format_usd(left_micro_usd)
    if resets_at is not None:
        h[RESETS_AT] = iso_utc(resets_at)
    return h


_COST_B = COST.encode("ascii")
_LEFT_B = LEFT.encode("ascii")


def answer_headers(
    known: dict[str, str], cost_micro_usd: int, left_micro_usd: int
) -> list[tuple[bytes, bytes]]:
    """``{**known, **keyfob_headers(cost_micro_usd=..., left_micro_usd=...)}`` as raw
    ASGI headers (lowercased, latin-1, the same order) for ``RawHeadersResponse``.

    Why: building the dict and having Starlette re-encode it costs about 2 us a call."""
    if COST in known or LEFT in known:  # not the case on any path today; merged as a dict
        known = {**known, COST: format_usd(cost_micro_usd), LEFT: format_usd(left_micro_usd)}
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in known.items()]
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in known.items()]
    raw.append((_COST_B, format_usd(cost_micro_usd).encode("ascii")))
    raw.append((_LEFT_B, format_usd(left_micro_usd).encode("ascii")))
    return raw
