"""Bearer token -> (Token, Grant), for every bearer endpoint (metered or not).

The cache keeps a lookup off the hot path without letting a revoked token through:

- personal server (write-back metering): an entry is valid only while no other
  connection has committed (``PRAGMA data_version``, ~2 us) and this process ran no
  transaction that may revoke (``WriteBack.generation``). A revoke from the CLI or the
  web page, or a refresh-token replay, is seen by the very next request; the reload
  is two primary-key lookups on the inline connection.
- otherwise (PostgreSQL, hosted): an endpoint that reserves nothing (``fresh=True``:
  ``/v1/models``, ``count_tokens``, ``/v1/keyfob/*``) reads token and grant on every
  request (one indexed join) and refreshes the entry; a miss evicts it. Metered calls
  use the cached entry (it lives ``GRANT_CACHE_TTL_S``, served stale at most
  ``GRANT_STALE_S`` more while one reload runs), because their reservation re-checks
  token and grant (and the grant's version) in its own transaction. Either way a
  revoke in any process refuses the very next request.
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

GRANT_CACHE_TTL_S = 0.5
GRANT_STALE_S = 0.25


def grant_cache() -> TTLCache[tuple[Token, Grant]]:
    return TTLCache(GRANT_CACHE_TTL_S, stale_grace_s=GRANT_STALE_S)


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
    kf: Keyfob, cache: TTLCache[tuple[Token, Grant]], request: Request, *, fresh: bool = False
) -> tuple[str, Token, Grant]:
    """Returns (token hash, token, grant) or raises a 401 GatewayError.

    ``fresh``: the caller reserves nothing, so nothing after this re-checks the token;
    without write-back (whose stamp already makes the entry exact) the store is read."""
    token = bearer(request)
    if kind_of(token) is not Kind.ACCESS:
        raise unauthorized("invalid access token")
    token_hash = hash_token(token)
    now = time.time()
    hot = kf.store.hot
    wb = hot.writeback if hot is not None else None
    found: tuple[Token, Grant] | None
    if hot is not None and wb is not None:
        stamp = wb.current_generation()
        found = cache.get(token_hash, stamp)
        if found is None:
            found = await kf.store.tokens.active_with_grant(token_hash, "access", now)
            if found is not None:
                cache.put(token_hash, found, stamp)
    elif fresh:
        found = await kf.store.tokens.active_with_grant(token_hash, "access", now)
        if found is None:
            cache.pop(token_hash)
        else:
            cache.put(token_hash, found)
    else:
        found = await cache.get_or_load(
            token_hash, lambda: kf.store.tokens.active_with_grant(token_hash, "access", now)
        )
    if found is None or found[0].expires_at <= now:
        raise unauthorized("invalid, expired or revoked access token")
    if not token_audience_ok(found[0].resource, kf.settings):  # RFC 8707
        raise unauthorized("this access token was issued for another resource")
    return token_hash, found[0], found[1]
