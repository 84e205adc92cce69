"""Device authorization grant (RFC 8628), for CLIs and headless scripts.

The device asks for a pair of codes; the person types the short user code at
``/device`` on any screen, sees the same consent page as the browser flow, and decides;
meanwhile the device polls the token endpoint. User codes use 20 consonants that cannot
be confused (no vowels, so no words; no 0/O or 1/I) in two groups of four, such as
``WDJB-MJHT``: 20^8, about 34 bits, against a rate-limited entry page and a 10-minute
lifetime (RFC 8628 5.1). Both codes are stored as hashes; a device code is single use,
and a device code presented again after its tokens were issued revokes them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from keyfob.oauth import rfc8707
from keyfob.oauth.consent import ConsentAsk, Suggestion, parse_suggestion
from keyfob.oauth.errors import OAuthError, invalid_grant
from keyfob.oauth.grants import issue_tokens
from keyfob.oauth.scope import well_formed
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Client, DeviceCode
from keyfob.tokens import Kind, hash_token, kind_of, new_token

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_AUTHORIZATION_PATH = "/oauth/device_authorization"
VERIFICATION_PATH = "/device"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
SLOW_DOWN_S = 5


def new_user_code() -> str:
    """Eight letters of the unambiguous alphabet, normalised (no dash)."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def display(normal: str) -> str:
    return f"{normal[:4]}-{normal[4:]}"


def normalize_user_code(text: str) -> str | None:
    """What a person typed -> the stored form; None if it cannot be a user code.

    Case, spaces and dashes do not matter (RFC 8628 6.1)."""
    if len(text) > 32:
        return None
    normal = "".join(c for c in text.upper() if c not in "- \t")
    if len(normal) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in normal):
        return None
    return normal


def user_code_hash(normal: str) -> str:
    return hash_token("user_code:" + normal)


@dataclass(frozen=True)
class DeviceRequest:
    """A pending device request the person is about to decide on."""

    device_code_hash: str
    client: Client
    scope: str
    resource: str | None
    suggestion: Suggestion

    def ask(self) -> ConsentAsk:
        return ConsentAsk(self.client.id, self.client.name, None, self.client.kind, self.suggestion)


async def device_authorization(
    store: Store, settings: Settings, client: Client, params: dict[str, str], now: float
) -> dict[str, Any]:
    """RFC 8628 3.1-3.2: create the codes for an authenticated (or public) client."""
    scope = params.get("scope", "")
    if not well_formed(scope):
        raise OAuthError("invalid_scope", "scope is not a list of scope tokens")
    resource = rfc8707.check_resource(params.get("resource"), settings)
    try:
        suggestion = parse_suggestion(params)
    except ValueError as exc:
        raise OAuthError("invalid_request", str(exc)) from None
    request_json = json.dumps(
        {
            "cap_micro_usd": suggestion.cap_micro_usd,
            "window": suggestion.window,
            "models": list(suggestion.models),
            "expires_in_s": suggestion.expires_in_s,
        }
    )
    device_code = new_token(Kind.DEVICE)
    for _ in range(5):
        user_code = new_user_code()
        saved = await store.devices.save(
            DeviceCode(
                device_code_hash=hash_token(device_code),
                user_code_hash=user_code_hash(user_code),
                client_id=client.id,
                scope=scope,
                resource=resource,
                request_json=request_json,
                status="pending",
                interval_s=settings.device_code_interval_s,
                created_at=now,
                expires_at=now + settings.device_code_ttl_s,
            )
        )
        if saved:
            break
    else:  # pragma: no cover - five collisions in 20^8 codes
        raise OAuthError("temporarily_unavailable", "try again", 503)
    verification_uri = settings.issuer + VERIFICATION_PATH
    return {
        "device_code": device_code,
        "user_code": display(user_code),
        "verification_uri": verification_uri,
        "verification_uri_complete": f"{verification_uri}?user_code={display(user_code)}",
        "expires_in": settings.device_code_ttl_s,
        "interval": settings.device_code_interval_s,
    }


async def pending_request(store: Store, typed: str, now: float) -> DeviceRequest | None:
    """The live, undecided request behind a user code a person typed, or None."""
    normal = normalize_user_code(typed)
    if normal is None:
        return None
    record = await store.devices.by_user_code(user_code_hash(normal))
    if record is None or record.status != "pending" or record.expires_at < now:
        return None
    client = await store.clients.get(record.client_id)
    if client is None:
        return None
    asked = json.loads(record.request_json or "{}")
    suggestion = Suggestion(
        asked.get("cap_micro_usd"),
        asked.get("window"),
        tuple(asked.get("models") or ()),
        asked.get("expires_in_s"),
    )
    return DeviceRequest(record.device_code_hash, client, record.scope, record.resource, suggestion)


async def decide(
    store: Store,
    device_code_hash: str,
    *,
    approved: bool,
    user_id: str,
    grant_id: str | None,
    now: float,
) -> bool:
    """Record the person's decision; False when the request expired or was decided."""
    return await store.devices.decide(
        device_code_hash, approved=approved, user_id=user_id, grant_id=grant_id, now=now
    )


async def poll(
    store: Store, settings: Settings, client: Client, params: dict[str, str], now: float
) -> dict[str, Any]:
    """RFC 8628 3.4-3.5: the token request of a polling device."""
    device_code = params.get("device_code", "")
    if not device_code:
        raise OAuthError("invalid_request", "device_code is required")
    if kind_of(device_code) is not Kind.DEVICE:
        raise invalid_grant("the device code is invalid")
    code_hash = hash_token(device_code)
    record = await store.devices.get(code_hash)
    if record is None or record.client_id != client.id:
        raise invalid_grant("the device code is invalid")
    if record.status == "used":
        # Single use: a second redemption means the code leaked; end what it produced.
        await store.tokens.revoke_family(code_hash)
        raise invalid_grant("the device code was already used; its tokens are revoked")
    if record.expires_at < now:
        raise OAuthError("expired_token", "the device code expired; start again")
    if record.status == "denied":
        raise OAuthError("access_denied", "the person denied access")
    if record.status == "pending":
        interval = record.interval_s
        too_fast = record.last_polled_at is not None and now - record.last_polled_at < interval
        if too_fast:
            interval += SLOW_DOWN_S
        await store.devices.polled(code_hash, now=now, interval_s=interval)
        if too_fast:
            raise OAuthError("slow_down", f"poll at most every {interval} seconds")
        raise OAuthError("authorization_pending", "the person has not decided yet")
    rfc8707.check_token_resource(params.get("resource"), record.resource, settings)
    if not await store.devices.consume(code_hash, now):
        await store.tokens.revoke_family(code_hash)
        raise invalid_grant("the device code was already used; its tokens are revoked")
    grant = await store.grants.get(record.grant_id or "")
    if grant is None or not grant.live(now):
        raise invalid_grant("the grant behind this device code was revoked or has expired")
    return await issue_tokens(
        store,
        settings,
        grant_id=grant.id,
        client_id=client.id,
        family_id=code_hash,
        scope=record.scope,
        resource=record.resource,
        now=now,
        not_after=grant.expires_at,
    )
