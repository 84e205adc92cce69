"""The 429 an app gets when its allowance refuses a call, shaped for the official SDKs.

Why a module of its own: the answer decides what every client library does next. The
OpenAI and Anthropic SDKs retry a 429 by default and sleep as long as ``Retry-After``
says (the Anthropic SDK up to ~50 days), so a monthly cap answered with the seconds until
the window resets hangs a client for weeks, and one without any hint makes it retry in
vain. Both SDKs obey ``x-should-retry`` before anything else. So:

- ``x-should-retry: true`` and a ``Retry-After`` only when retrying within
  ``RETRY_SOON_S`` can succeed: a rate limit (requests or tokens per minute) or a rolling
  window that frees in time, a calendar window about to reset, or money held by calls in
  flight that may settle below their reservation (what a ``wait`` policy waits for);
- otherwise ``x-should-retry: false`` and no ``Retry-After``: the reset time is in
  ``x-keyfob-allowance-resets-at`` and in the message, for the app to show its user.
"""

from __future__ import annotations

import math
import time

from keyfob.allowance.plan import RATE_SPAN_S, bucket_width
from keyfob.allowance.service import AllowanceExhausted
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.headers import iso_utc, keyfob_headers
from keyfob.money import format_usd

#: The longest wait worth telling a client to sleep through: a rate limit's, which may be
#: a minute and one time bucket (``allowance/plan.py``). Both official SDKs honour a
#: ``Retry-After`` this long (the OpenAI SDK ignores ones above 120 s and backs off by
#: itself), and a person watching an app would rather be told than kept waiting longer.
RETRY_SOON_S = RATE_SPAN_S + bucket_width(RATE_SPAN_S)
#: Calls in flight hold their worst case; most settle below it within seconds.
IN_FLIGHT_RETRY_S = 2

SHOULD_RETRY = "x-should-retry"

#: Limits that count calls or tokens rather than money.
RATE_LIMITS = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}


def retry_after_s(exc: AllowanceExhausted, now: float) -> int | None:
    """Seconds after which the same call can fit, or None when retrying soon cannot help."""
    if exc.label == "per-call ceiling":
        return None  # this call never fits; only a smaller call or the person can help
    if exc.retry_at is not None and exc.retry_at - now <= RETRY_SOON_S:
        return max(1, math.ceil(exc.retry_at - now))
    st = exc.state
    if (
        exc.window.key not in RATE_LIMITS
        and st.reserved_micro_usd > 0
        and st.left_micro_usd + st.reserved_micro_usd >= exc.needed_micro_usd
    ):
        return IN_FLIGHT_RETRY_S  # fits once calls in flight settle
    return None


def _resets_at(exc: AllowanceExhausted, now: float) -> float | None:
    if exc.retry_at is not None:
        return exc.retry_at
    return exc.window.resets_at if exc.window.resets_at > now else None


def exhausted(exc: AllowanceExhausted, now: float | None = None) -> GatewayError:
    """The 429 for a refused reservation (OpenAI's shape; the Anthropic surface reshapes
    the body and keeps the status and headers)."""
    now = time.time() if now is None else now
    state = exc.state
    resets_at = _resets_at(exc, now)
    when = (
        f"It resets at {iso_utc(resets_at)}"
        if resets_at is not None
        else "It does not reset by itself (a top-up or the person can raise it)"
    )
    retry = retry_after_s(exc, now)
    rate = RATE_LIMITS.get(exc.window.key)
    if rate is not None:
        message = (
            f"rate limit reached: {exc.label} is capped at {state.cap_micro_usd} "
            f"{rate} per minute, {state.spent_micro_usd} used in the last minute. {when}"
        )
        code, type_ = "rate_limit_exceeded", rate
    else:
        message = (
            f"allowance exhausted: limit {exc.label!r} ({exc.window.key}) has a cap of "
            f"${format_usd(state.cap_micro_usd)}, ${format_usd(state.left_micro_usd)} left "
            f"(${format_usd(state.reserved_micro_usd)} held by calls in flight); this call "
            f"may cost up to ${format_usd(exc.needed_micro_usd)}. {when}; lower max_tokens "
            f"or ask the person to raise the allowance"
        )
        code, type_ = "allowance_exhausted", "insufficient_quota"
    left = state.left_micro_usd if rate is None else None
    headers = keyfob_headers(left_micro_usd=left, resets_at=resets_at)
    headers[SHOULD_RETRY] = "true" if retry is not None else "false"
    if retry is not None:
        headers["Retry-After"] = str(retry)
        message += f". Retrying after {retry} s can succeed"
    return GatewayError(429, message, code=code, type_=type_, headers=headers)
