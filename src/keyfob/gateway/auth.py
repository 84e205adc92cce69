"""Bearer token -> (Token, Grant), cached for at most a second.

The cache keeps a lookup off the hot path; revocation stays within a second because
entries expire after one (an expired entry is served only while its reload runs), and
the reservation re-checks token and grant itself (on the personal server, against any
commit of another connection: ``store/sqlite_writeback.py``).
"""

from __future__ import annotations

import time

from starlette.requests import Request

from keyfob.context import Keyfob
from keyfob.gateway.cache import TTLCache
from keyfob.gateway.errors import unauthorized
from keyfob.oauth.rfc8707 import token_audience_ok
from keyfob.store.records import Grant, Token
from keyfob.tokens import Kind, hash_token, kind_of

GRANT_CACHE_TTL_S = 1.0


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        # OpenAI SDKs send the key as a bearer; Anthropic-style x-api-key is accepted too.
        alt = request.headers.get("x-api-key", "").strip()
        if alt:
            return alt
        raise unauthorized(
            "missing bearer token: send Authorization: Bearer <access token>", error=None
        )
    return value.strip()


async def authenticate(
    kf: Keyfob, cache: TTLCache[tuple[Token, Grant]], request: Request
) -> tuple[str, Token, Grant]:
    """Returns (token hash, token, grant) or raises a 401 GatewayError."""
    token = bearer(request)
    if kind_of(token) is not Kind.ACCESS:
        raise unauthorized("invalid access token")
    token_hash = hash_token(token)
    now = time.time()
    found = await cache.get_or_load(
        token_hash, lambda: kf.store.tokens.active_with_grant(token_hash, "access", now)
    )
    if found is None or found[0].expires_at <= now:
        raise unauthorized("invalid, expired or revoked access token")
    if not token_audience_ok(found[0].resource, kf.settings):  # RFC 8707
        raise unauthorized("this access token was issued for another resource")
    return token_hash, found[0], found[1]
