"""Linking an OpenRouter account through OpenRouter's own OAuth PKCE flow.

Keyfob is the *client* here: it sends the person to ``{auth_base}/auth?callback_url=...
&code_challenge=...&code_challenge_method=S256``; OpenRouter redirects back with
``?code=...``, which ``exchange`` trades at ``POST {api_base}/auth/keys`` for a key. The
key is asked for with a credit ``limit``, so it is capped at OpenRouter too. Base URLs are
parameters so the tests can stand a local fake in for openrouter.ai.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from keyfob.providers import UpstreamError
from keyfob.providers.http import dumps

AUTH_BASE = "https://openrouter.ai"
API_BASE = "https://openrouter.ai/api/v1"


@dataclass(frozen=True)
class PkceStart:
    #: Where to send the person's browser.
    url: str
    #: Keep server-side (the session) until the callback; never put it in a URL.
    verifier: str


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin(callback_url: str, *, auth_base: str = AUTH_BASE) -> PkceStart:
    verifier = secrets.token_urlsafe(48)
    query = urlencode(
        {
            "callback_url": callback_url,
            "code_challenge": challenge_of(verifier),
            "code_challenge_method": "S256",
        }
    )
    return PkceStart(f"{auth_base.rstrip('/')}/auth?{query}", verifier)


async def exchange(
    http: aiohttp.ClientSession,
    code: str,
    verifier: str,
    *,
    limit_usd: float | None = None,
    api_base: str = API_BASE,
) -> str:
    """Trade the callback's code for an OpenRouter key (capped at ``limit_usd``)."""
    body: dict[str, object] = {
        "code": code,
        "code_verifier": verifier,
        "code_challenge_method": "S256",
    }
    if limit_usd is not None:
        body["limit"] = limit_usd
    try:
        async with http.post(
            f"{api_base.rstrip('/')}/auth/keys",
            data=dumps(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            data = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamError(f"OpenRouter key exchange failed ({type(exc).__name__})") from None
    key = data.get("key") if isinstance(data, dict) else None
    if status != 200 or not isinstance(key, str) or not key:
        raise UpstreamError(
            f"OpenRouter refused the code (HTTP {status})", status=status, reached=True
        )
    return key
