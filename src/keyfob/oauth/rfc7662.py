"""Token introspection (RFC 7662) at ``POST /oauth/introspect``, for confidential clients.

A public client has no credential, so anyone could use it to probe tokens: only apps
with a secret may introspect, and only their own tokens. Any token that is unknown,
expired, revoked, of a revoked grant, or of another client is just ``{"active": false}``
(RFC 7662 2.2): the answer says nothing more about it.
"""

from __future__ import annotations

from typing import Any

from keyfob.oauth.errors import invalid_client
from keyfob.oauth.grants import ACCESS
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Client
from keyfob.tokens import Kind, equal, hash_token, kind_of

INTROSPECTION_PATH = "/oauth/introspect"
INACTIVE: dict[str, Any] = {"active": False}


async def introspect(
    store: Store, settings: Settings, client: Client, params: dict[str, str], now: float
) -> dict[str, Any]:
    if client.is_public:
        raise invalid_client("introspection is for confidential clients")
    token = params.get("token", "")
    if not token or kind_of(token) not in (Kind.ACCESS, Kind.REFRESH):
        return dict(INACTIVE)
    record = await store.tokens.get(hash_token(token))
    if (
        record is None
        or not equal(record.client_id, client.id)
        or record.revoked_at is not None
        or record.expires_at <= now
        or (record.kind != ACCESS and record.used_at is not None)
    ):
        return dict(INACTIVE)
    grant = await store.grants.get(record.grant_id)
    if grant is None or not grant.live(now):
        return dict(INACTIVE)
    body: dict[str, Any] = {
        "active": True,
        "scope": record.scope,
        "client_id": record.client_id,
        "token_type": "Bearer" if record.kind == ACCESS else "refresh_token",
        "exp": int(record.expires_at),
        "iat": int(record.created_at),
        "sub": grant.user_id,
        "iss": settings.issuer,
    }
    if record.resource:
        body["aud"] = record.resource
    return body
