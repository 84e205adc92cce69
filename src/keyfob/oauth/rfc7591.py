"""Dynamic client registration (RFC 7591) at ``POST /oauth/register``: public clients only.

Anyone can call this endpoint, so it only ever creates what anyone could already use
safely: a public client (``token_endpoint_auth_method`` "none", PKCE S256 required) with
redirect URIs that pass the same rules as the owner's registrations (rfc8252). Fields that
would make a client confidential, give it keys, or widen what it can do are refused
(``invalid_client_metadata``); other unknown fields are ignored and not stored, as
RFC 7591 2 requires. The consent page marks such apps as self-registered.
"""

from __future__ import annotations

import json
import time
from typing import Any

from keyfob.limits import InvalidJson, parse_json
from keyfob.oauth.clients import InvalidClient, check_name, check_redirect_uris
from keyfob.oauth.errors import OAuthError
from keyfob.oauth.rfc8628 import GRANT_TYPE as DEVICE_GRANT
from keyfob.store import Store

REGISTRATION_PATH = "/oauth/register"
MAX_BODY_BYTES = 16 * 1024
GRANT_TYPES = ("authorization_code", "refresh_token", DEVICE_GRANT)
#: Fields that would change who the client is or how it authenticates.
REFUSED_FIELDS = (
    "client_id",
    "client_secret",
    "client_secret_expires_at",
    "client_id_issued_at",
    "registration_access_token",
    "registration_client_uri",
    "jwks",
    "jwks_uri",
    "software_statement",
    "sector_identifier_uri",
    "request_uris",
    "initiate_login_uri",
    "token_endpoint_auth_signing_alg",
    "tls_client_auth_subject_dn",
    "backchannel_logout_uri",
    "frontchannel_logout_uri",
)
OPTIONAL_STRINGS = ("client_uri", "software_id", "software_version", "scope")
MAX_STRING = 255


def _metadata_error(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def _string_list(body: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = body.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _metadata_error(f"{name} must be a list of strings")
    return list(dict.fromkeys(value))


def parse(raw: bytes) -> dict[str, Any]:
    try:
        body = parse_json(raw)
    except InvalidJson as exc:
        raise OAuthError("invalid_request", f"the body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise OAuthError("invalid_request", "the body must be a JSON object")
    return body


async def register(store: Store, body: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Validate client metadata and register a public client; the RFC 7591 3.2.1 body."""
    refused = sorted(set(REFUSED_FIELDS) & set(body))
    if refused:
        raise _metadata_error(f"these fields cannot be registered here: {', '.join(refused)}")
    method = body.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise _metadata_error(
            "only public clients can register themselves: token_endpoint_auth_method 'none'"
        )
    grant_types = _string_list(body, "grant_types", ["authorization_code", "refresh_token"])
    if not grant_types or not set(grant_types) <= set(GRANT_TYPES):
        raise _metadata_error(f"grant_types may only contain {', '.join(GRANT_TYPES)}")
    if _string_list(body, "response_types", ["code"]) != ["code"]:
        raise _metadata_error("response_types must be ['code']")
    name = body.get("client_name")
    if not isinstance(name, str):
        raise _metadata_error("client_name is required (the consent page shows it)")
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a list of URIs")
    try:
        clean_name = check_name(name)
    except InvalidClient as exc:
        raise _metadata_error(str(exc)) from None
    try:
        clean_uris = check_redirect_uris(uris)
    except InvalidClient as exc:
        raise OAuthError("invalid_redirect_uri", str(exc)) from None
    extra: dict[str, str] = {}
    for field in OPTIONAL_STRINGS:
        if field in body:
            value = body[field]
            if not isinstance(value, str) or len(value) > MAX_STRING or not value.isprintable():
                raise _metadata_error(f"{field} must be a string of at most {MAX_STRING}")
            extra[field] = value
    if "client_uri" in extra and not extra["client_uri"].startswith("https://"):
        raise _metadata_error("client_uri must be an https URL")
    client = await store.clients.add(
        name=clean_name,
        redirect_uris=clean_uris,
        is_public=True,
        secret_hash=None,
        kind="dynamic",
        metadata_json=json.dumps(extra) if extra else None,
    )
    return {
        "client_id": client.id,
        "client_id_issued_at": int(now if now is not None else time.time()),
        "client_name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        **extra,
    }
