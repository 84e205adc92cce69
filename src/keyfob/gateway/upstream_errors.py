"""Turning an upstream's error answer into the client's OpenAI-shaped error.

The status passes through (429 with its ``Retry-After``), except 401/403: those mean the
*provider* refused Keyfob's stored credential, not that the app's token is bad, so they
become 502 lest an SDK tell its user to sign in again. The upstream's message is kept
(truncated), with the provider key masked should the upstream echo it back: in every
string Keyfob takes from the error body (message, code, type), in every header passed on,
and (``mask_bytes``, called by the relay and the whole-answer path) in every byte of an
answer or stream event that reaches the app.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from keyfob.gateway.errors import GatewayError

MAX_MESSAGE = 500
MAX_ERROR_BODY = 64 * 1024
MASK = "***"
#: Shorter "keys" (a local server's "x") are not masked: every answer would be mangled
#: and a secret that short protects nothing anyway.
MIN_MASKED = 8


def mask(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    if secret and len(secret) >= MIN_MASKED and secret in text:
        return text.replace(secret, MASK)
    return text


def mask_bytes(data: bytes, secret: bytes | None) -> bytes:
    """``mask`` for raw bytes (answers and SSE events; a key is ASCII, and JSON escaping
    does not change its characters). One ``in`` test when nothing is echoed."""
    if secret and secret in data:
        return data.replace(secret, MASK.encode())
    return data


def secret_bytes(api_key: str | None) -> bytes | None:
    """What ``mask_bytes`` looks for (None when the key is too short to mask)."""
    return api_key.encode() if api_key and len(api_key) >= MIN_MASKED else None


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
    message, code, type_ = (
        mask(message, api_key),
        mask_opt(code, api_key),
        mask_opt(type_, api_key),
    )
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
    passed = GatewayError(
        status,
        message,
        code=code or "upstream_error",
        type_=type_ or ("api_error" if status >= 500 else "upstream_error"),
        headers=headers,
    )
    passed.from_upstream = True  # counted as an upstream error, not a refusal
    return passed


#: Upstream rate-limit hints passed on to the client with an error answer.
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
PASSED_NAMES = frozenset({"retry-after-ms"})


def mask_opt(text: str | None, secret: str | None) -> str | None:
    return None if text is None else mask(text, secret)


def passed_headers(headers: Mapping[str, str], api_key: str | None = None) -> dict[str, str]:
    """The upstream's rate-limit headers, the key masked in their values (a header whose
    name carries the key, in any case, is dropped: names reach us lower-cased)."""
    return {
        k: mask(v, api_key)
        for k, v in headers.items()
        if (k.lower() in PASSED_NAMES or k.lower().startswith(PASSED_PREFIXES))
        and mask(k.lower(), (api_key or "").lower() or None) == k.lower()
    }
