"""Turning an upstream's error answer into the client's OpenAI-shaped error.

The status passes through (429 with its ``Retry-After``), except 401/403: those mean the
*provider* refused Keyfob's stored credential, not that the app's token is bad, so they
become 502 lest an SDK tell its user to sign in again. The upstream's message is kept
(truncated), with the provider key masked should the upstream echo it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from keyfob.gateway.errors import GatewayError

MAX_MESSAGE = 500
MAX_ERROR_BODY = 64 * 1024


def upstream_error(
    status: int, raw: bytes, *, api_key: str | None, retry_after: str | None, provider_name: str
) -> GatewayError:
    message, code, type_ = None, None, None
    try:
        data = json.loads(raw[:MAX_ERROR_BODY])
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = err.get("message") if isinstance(err.get("message"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
            type_ = err.get("type") if isinstance(err.get("type"), str) else None
        elif isinstance(err, str):
            message = err
    except (ValueError, UnicodeDecodeError):
        pass
    if message is None:
        message = f"upstream answered HTTP {status}"
    if api_key:
        message = message.replace(api_key, "***")
    message = f"provider {provider_name!r}: {message[:MAX_MESSAGE]}"
    headers = {}
    if status == 429 and retry_after and retry_after.strip().isdigit():
        headers["Retry-After"] = retry_after.strip()
    if status in (401, 403):
        return GatewayError(
            502,
            message + " (the provider refused the linked credential)",
            code="provider_auth_failed",
            type_="api_error",
            headers=headers,
        )
    if not 400 <= status <= 599:
        status = 502
    return GatewayError(
        status,
        message,
        code=code or "upstream_error",
        type_=type_ or ("api_error" if status >= 500 else "upstream_error"),
        headers=headers,
    )


#: Upstream rate-limit hints passed on to the client with an error answer.
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
PASSED_NAMES = frozenset({"retry-after-ms"})


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's rate-limit headers (never anything that could identify the key)."""
    return {
        k: v
        for k, v in headers.items()
        if k.lower() in PASSED_NAMES or k.lower().startswith(PASSED_PREFIXES)
    }
