"""Token revocation (RFC 7009) at ``POST /oauth/revoke``.

The client authenticates as at the token endpoint (public clients with their client_id).
The answer is 200 whether or not the token existed, was already revoked, or belongs to
another client (then nothing happens): the endpoint must not become an oracle for which
tokens exist. Revoking a refresh token ends its whole family, the access tokens issued
with it included (RFC 7009 2.1); revoking an access token ends just that token.
"""

from __future__ import annotations

from keyfob.oauth.errors import OAuthError
from keyfob.oauth.grants import REFRESH
from keyfob.store import Store
from keyfob.store.records import Client
from keyfob.tokens import Kind, equal, hash_token, kind_of

REVOCATION_PATH = "/oauth/revoke"
TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


async def revoke(store: Store, client: Client, params: dict[str, str]) -> None:
    token = params.get("token", "")
    if not token:
        raise OAuthError("invalid_request", "token is required")
    # The hint only says where to look first; we find any kind by its prefix anyway,
    # and an unknown hint is ignored (RFC 7009 2.1).
    if kind_of(token) not in (Kind.ACCESS, Kind.REFRESH):
        return
    record = await store.tokens.get(hash_token(token))
    if record is None or not equal(record.client_id, client.id):
        return
    if record.kind == REFRESH:
        await store.tokens.revoke_family(record.family_id)
    else:
        await store.tokens.revoke(record.token_hash)
