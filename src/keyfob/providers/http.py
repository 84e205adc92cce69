"""The one way adapters send a request upstream, with failures classified for metering.

``UpstreamError.reached`` tells the gateway whether the upstream may have done billable
work: a refused connection did none (and may be retried), a timeout after sending may
have. Exceptions never carry the key or URL credentials, only the exception's type name.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson

from keyfob.providers import UpstreamError


def dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> aiohttp.ClientResponse:
    """POST ``body``; the response is returned unread so the caller can stream it."""
    try:
        return await http.post(url, data=dumps(body), headers=headers)
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        status = 504 if isinstance(exc, aiohttp.ConnectionTimeoutError) else 502
        raise UpstreamError(
            f"upstream unreachable ({type(exc).__name__})", status=status, reached=False
        ) from None
    except TimeoutError as exc:
        raise UpstreamError(
            f"upstream timed out before answering ({type(exc).__name__})", status=504, reached=True
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"upstream connection failed ({type(exc).__name__})", status=502, reached=True
        ) from None


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    """GET a JSON document (model listing); UpstreamError on any failure."""
    try:
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise UpstreamError(
                    f"listing models answered HTTP {resp.status}", status=resp.status, reached=True
                )
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamError(f"cannot list models: {type(exc).__name__}") from None


def model_ids(data: Any) -> list[str]:
    """The ``id`` of each entry of an OpenAI- or Anthropic-style model list."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [str(m["id"]) for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]
