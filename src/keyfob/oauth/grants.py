"""Issuing tokens: one access token and one refresh token, stored only as hashes.

Every token descended from one authorization code carries the code's hash as its
``family_id``, so a replayed code or refresh token can revoke the whole lineage in one
statement (RFC 9700 2.2.2 and 4.14).
"""

from __future__ import annotations

from typing import Any

from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Token
from keyfob.tokens import Kind, hash_token, new_token

ACCESS = "access"
REFRESH = "refresh"


def token_ttls_s(settings: Settings) -> tuple[int, int]:
    """(access, refresh) token lifetimes, for ``GrantsRepo.set_expiry``."""
    return settings.access_token_ttl_s, settings.refresh_token_ttl_s


def new_pair(
    settings: Settings,
    *,
    grant_id: str,
    client_id: str,
    family_id: str,
    scope: str,
    resource: str | None,
    now: float,
    not_after: float | None = None,
) -> tuple[tuple[Token, Token], dict[str, Any]]:
    """A fresh token pair (the records to store) and the RFC 6749 5.1 response body.

    ``not_after`` is the grant's end (``Grant.expires_at``): neither token outlives it,
    and ``expires_in`` says so (whole seconds, rounded down)."""
    access = new_token(Kind.ACCESS)
    refresh = new_token(Kind.REFRESH)
    access_ends = now + settings.access_token_ttl_s
    refresh_ends = now + settings.refresh_token_ttl_s
    if not_after is not None:
        access_ends, refresh_ends = min(access_ends, not_after), min(refresh_ends, not_after)
    records = (
        Token(
            hash_token(access),
            ACCESS,
            grant_id,
            client_id,
            family_id,
            scope,
            resource,
            now,
            access_ends,
            None,
            None,
        ),
        Token(
            hash_token(refresh),
            REFRESH,
            grant_id,
            client_id,
            family_id,
            scope,
            resource,
            now,
            refresh_ends,
            None,
            None,
        ),
    )
    body = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": max(0, int(access_ends - now)),
        "refresh_token": refresh,
        "scope": scope,
    }
    return records, body


async def issue_tokens(
    store: Store,
    settings: Settings,
    *,
    grant_id: str,
    client_id: str,
    family_id: str,
    scope: str,
    resource: str | None,
    now: float,
    not_after: float | None = None,
) -> dict[str, Any]:
    """Create and store a token pair; return the RFC 6749 5.1 response body."""
    records, body = new_pair(
        settings,
        grant_id=grant_id,
        client_id=client_id,
        family_id=family_id,
        scope=scope,
        resource=resource,
        now=now,
        not_after=not_after,
    )
    await store.tokens.save(*records)
    return body
