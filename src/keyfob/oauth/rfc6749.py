"""The OAuth 2.0 core (RFC 6749) as OAuth 2.1 and RFC 9700 narrow it.

Only the authorization code grant (with PKCE S256) and the refresh token grant exist:
implicit and password grants leak tokens or passwords and are answered with
``unsupported_response_type`` / ``unsupported_grant_type``. Codes are single use and
short-lived; a second use of a code, or of a refresh token, is treated as theft and
revokes every token of that family. Client secrets are compared as hashes, in constant
time.

Everything here takes plain data (parameter pairs, header values) and the Store, and
either returns a result or raises ``OAuthError``; the HTTP mapping lives in routes.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from keyfob.oauth import client_metadata, rfc7636, rfc8252, rfc8628, rfc8707, rfc9207
from keyfob.oauth.consent import CAP_PARAMETER, ConsentAsk, Suggestion, parse_suggestion
from keyfob.oauth.errors import ErrorCode, OAuthError, invalid_client, invalid_grant
from keyfob.oauth.grants import REFRESH, issue_tokens, new_pair
from keyfob.oauth.scope import well_formed
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.apps import RefreshExpired, RefreshGrantEnded, RefreshReplayed
from keyfob.store.records import AuthCode, Client, Token
from keyfob.tokens import Kind, equal, hash_token, kind_of, new_token

MAX_STATE = 1024
MAX_PARAM = 2048
__all__ = ["CAP_PARAMETER", "AuthorizationRequest", "authenticate_client", "token_request"]


def single_values(items: Iterable[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """Parameters as a dict, plus the names sent more than once (RFC 6749 3.1: MUST NOT)."""
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in items:
        if name in params:
            repeated.add(name)
        params[name] = value
    return params, repeated


# --------------------------------------------------------------------------------------
# Authorization endpoint (RFC 6749 4.1.1)


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request: safe to show a consent page for.

    An app may suggest the allowance the person sees pre-filled on the consent page with
    the extra parameters ``keyfob_cap_usd``, ``keyfob_window``, ``keyfob_models`` and
    ``keyfob_expires_in`` (see consent.py); the person decides the final values.
    """

    client_id: str
    client_name: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scope: str
    resource: str | None
    suggested_cap_micro_usd: int | None
    suggested_window: str | None = None
    suggested_models: tuple[str, ...] = ()
    client_kind: str = "registered"
    suggested_expires_in_s: int | None = None

    @property
    def suggestion(self) -> Suggestion:
        return Suggestion(
            self.suggested_cap_micro_usd,
            self.suggested_window,
            tuple(self.suggested_models),
            self.suggested_expires_in_s,
        )

    def ask(self) -> ConsentAsk:
        host = urlsplit(self.redirect_uri).netloc or self.redirect_uri
        return ConsentAsk(self.client_id, self.client_name, host, self.client_kind, self.suggestion)

    def as_params(self) -> dict[str, Any]:
        """Plain, JSON-safe data (to keep the request in the session until consent)."""
        return asdict(self)

    def as_query(self) -> list[tuple[str, str]]:
        """The request again as authorization request parameters (for re-validation)."""
        pairs = [
            ("response_type", "code"),
            ("client_id", self.client_id),
            ("redirect_uri", self.redirect_uri),
            ("code_challenge", self.code_challenge),
            ("code_challenge_method", "S256"),
        ]
        if self.state is not None:
            pairs.append(("state", self.state))
        if self.scope:
            pairs.append(("scope", self.scope))
        if self.resource is not None:
            pairs.append(("resource", self.resource))
        return pairs + self.suggestion.as_params()


async def find_client(store: Store, settings: Settings, client_id: str) -> Client | None:
    """A stored client, or one described by a Client ID Metadata Document. Raises
    OAuthError (never redirectable) when a document URL cannot be used."""
    try:
        return await client_metadata.resolve_client(store, settings, client_id)
    except client_metadata.MetadataDocumentError as exc:
        raise OAuthError("invalid_client", f"client metadata document: {exc}") from None


async def validate_authorization_request(
    store: Store, items: Iterable[tuple[str, str]], settings: Settings | None = None
) -> AuthorizationRequest:
    """Validate an authorization request, in the order RFC 6749 4.1.2.1 needs.

    Until the client and its redirect URI are known to be good, errors carry no
    ``redirect_uri`` (the route shows them to the person); after that they do.
    """
    settings = settings or Settings()
    params, repeated = single_values(items)

    client_id = params.get("client_id", "")
    if "client_id" in repeated:
        raise OAuthError("invalid_request", "client_id was sent more than once")
    if not client_id or len(client_id) > client_metadata.MAX_URL:
        raise OAuthError("invalid_request", "client_id is missing")
    client = await find_client(store, settings, client_id)
    if client is None:
        raise OAuthError("invalid_request", "unknown client_id")

    redirect_uri = params.get("redirect_uri", "")
    if "redirect_uri" in repeated:
        raise OAuthError("invalid_request", "redirect_uri was sent more than once")
    if not redirect_uri:
        raise OAuthError("invalid_request", "redirect_uri is required")
    if not rfc8252.matches(redirect_uri, client.redirect_uris):
        raise OAuthError(
            "invalid_request", "redirect_uri does not match any URI registered for this app"
        )

    # From here on, errors go back to the (now trusted) redirect URI.
    state = params.get("state")
    if "state" in repeated or (state is not None and len(state) > MAX_STATE):
        raise OAuthError(
            "invalid_request",
            f"state must be sent once, at most {MAX_STATE} characters",
            redirect_uri=redirect_uri,
        )

    def fail(error: ErrorCode, description: str) -> OAuthError:
        return OAuthError(error, description, redirect_uri=redirect_uri, state=state)

    if repeated:
        raise fail("invalid_request", f"parameters sent more than once: {sorted(repeated)}")
    if any(len(v) > MAX_PARAM for v in params.values()):
        raise fail("invalid_request", "a parameter is too long")
    response_type = params.get("response_type")
    if not response_type:
        raise fail("invalid_request", "response_type is required")
    if response_type != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")
    if params.get("response_mode", "query") != "query":
        raise fail("invalid_request", "only response_mode=query is supported")
    if "request" in params:
        raise fail("request_not_supported", "request objects are not supported")
    if "request_uri" in params:
        raise fail("request_uri_not_supported", "request_uri is not supported")
    try:
        challenge = rfc7636.check_challenge(
            params.get("code_challenge"), params.get("code_challenge_method")
        )
        resource = rfc8707.check_resource(params.get("resource"), settings)
    except OAuthError as exc:
        raise fail(exc.error, exc.description) from None

    scope = params.get("scope", "")
    if not well_formed(scope):
        raise fail("invalid_scope", "scope is not a list of scope tokens")

    try:
        suggestion = parse_suggestion(params)
    except ValueError as exc:
        raise fail("invalid_request", str(exc)) from None

    return AuthorizationRequest(
        client.id,
        client.name,
        redirect_uri,
        state,
        challenge,
        scope,
        resource,
        suggestion.cap_micro_usd,
        suggestion.window,
        suggestion.models,
        client.kind,
        suggestion.expires_in_s,
    )


async def issue_code(
    store: Store,
    settings: Settings,
    request: AuthorizationRequest,
    *,
    user_id: str,
    grant_id: str,
    now: float,
) -> str:
    """Create a single-use code bound to client, redirect URI and PKCE challenge."""
    code = new_token(Kind.CODE)
    await store.codes.save(
        AuthCode(
            code_hash=hash_token(code),
            client_id=request.client_id,
            user_id=user_id,
            grant_id=grant_id,
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            scope=request.scope,
            resource=request.resource,
            expires_at=now + settings.auth_code_ttl_s,
            used_at=None,
        )
    )
    return code


def success_redirect(request: AuthorizationRequest, code: str, issuer: str) -> str:
    return rfc9207.redirect_with(
        request.redirect_uri, {"code": code, "state": request.state}, issuer
    )


def error_redirect(error: OAuthError, issuer: str) -> str:
    """Where to send an error whose redirect URI was validated (RFC 6749 4.1.2.1)."""
    assert error.redirect_uri is not None
    return rfc9207.redirect_with(
        error.redirect_uri,
        {
            "error": error.error,
            "error_description": error.description or None,
            "state": error.state,
        },
        issuer,
    )


# --------------------------------------------------------------------------------------
# Token endpoint (RFC 6749 3.2, 4.1.3, 6)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 2.3.1): both halves are form-urlencoded first."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("only HTTP Basic client authentication is supported")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise invalid_client("malformed Basic credentials")
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


async def authenticate_client(
    store: Store, params: dict[str, str], authorization: str | None
) -> Client:
    """Identify and authenticate the client: none (public), basic or post (confidential)."""
    basic = _basic_credentials(authorization)
    if basic is not None:
        if "client_secret" in params:
            raise OAuthError("invalid_request", "use one client authentication method")
        client_id, secret = basic
        if params.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated one")
    else:
        client_id = params.get("client_id", "")
        secret = params.get("client_secret", "")
        if not client_id:
            raise invalid_client("client_id is required")
    client = await store.clients.get(client_id) if len(client_id) <= 255 else None
    # hash even for unknown clients, so timing says nothing about which ids exist
    presented = hash_token(secret) if secret else ""
    if client is None:
        raise invalid_client("unknown client or bad credentials")
    if client.is_public:
        if basic is not None or secret:
            raise invalid_client("a public client has no secret")
        return client
    if not secret or not client.secret_hash or not equal(presented, client.secret_hash):
        raise invalid_client("unknown client or bad credentials")
    return client


async def token_request(
    store: Store,
    settings: Settings,
    items: Iterable[tuple[str, str]],
    authorization: str | None,
    now: float,
) -> dict[str, Any]:
    """Handle a token request; returns the JSON body of a successful response."""
    params, repeated = single_values(items)
    if repeated:
        raise OAuthError("invalid_request", f"parameters sent more than once: {sorted(repeated)}")
    if any(len(v) > MAX_PARAM for v in params.values()):
        raise OAuthError("invalid_request", "a parameter is too long")
    grant_type = params.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    client = await authenticate_client(store, params, authorization)
    if grant_type == "authorization_code":
        return await _authorization_code(store, settings, client, params, now)
    if grant_type == "refresh_token":
        return await _refresh_token(store, settings, client, params, now)
    if grant_type == rfc8628.GRANT_TYPE:
        return await rfc8628.poll(store, settings, client, params, now)
    raise OAuthError(
        "unsupported_grant_type",
        "only authorization_code, refresh_token and the device code grant are supported",
    )


async def _authorization_code(
    store: Store, settings: Settings, client: Client, params: dict[str, str], now: float
) -> dict[str, Any]:
    code = params.get("code", "")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        raise OAuthError("invalid_request", "redirect_uri is required")
    if kind_of(code) is not Kind.CODE:
        raise invalid_grant("the code is invalid, expired or already used")
    code_hash = hash_token(code)
    record, first_use = await store.codes.consume(code_hash, now)
    if record is None:
        raise invalid_grant("the code is invalid, expired or already used")
    if not first_use:
        # RFC 6749 4.1.2 / RFC 9700 4.5: a reused code means it leaked; revoke its tokens.
        await store.tokens.revoke_family(code_hash)
        raise invalid_grant("the code is invalid, expired or already used")
    if not equal(record.client_id, client.id):
        raise invalid_grant("the code was issued to another client")
    if record.expires_at < now:
        raise invalid_grant("the code is invalid, expired or already used")
    if not equal(record.redirect_uri, redirect_uri):
        raise invalid_grant("redirect_uri differs from the authorization request")
    rfc7636.verify(params.get("code_verifier"), record.code_challenge)
    rfc8707.check_token_resource(params.get("resource"), record.resource, settings)
    grant = await store.grants.get(record.grant_id)
    if grant is None or not grant.live(now):
        raise invalid_grant("the grant behind this code was revoked or has expired")
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


async def _refresh_token(
    store: Store, settings: Settings, client: Client, params: dict[str, str], now: float
) -> dict[str, Any]:
    presented = params.get("refresh_token", "")
    if not presented:
        raise OAuthError("invalid_request", "refresh_token is required")
    token_hash = hash_token(presented)
    token = await store.tokens.get(token_hash) if kind_of(presented) is Kind.REFRESH else None
    if token is None or token.kind != REFRESH:
        raise invalid_grant("the refresh token is invalid")
    if not equal(token.client_id, client.id):
        raise invalid_grant("the refresh token was issued to another client")
    # Malformed requests are refused before the token is spent.
    rfc8707.check_token_resource(params.get("resource"), token.resource, settings)
    scope = token.scope
    if "scope" in params:
        # RFC 6749 6: the new scope may narrow the original one, never widen it.
        if not set(params["scope"].split()) <= set(token.scope.split()):
            raise OAuthError("invalid_scope", "a refresh may not widen the scope")
        scope = " ".join(params["scope"].split())
    body: dict[str, Any] = {}

    def successors(grant_ends: float | None) -> tuple[Token, ...]:
        records, answer = new_pair(
            settings,
            grant_id=token.grant_id,
            client_id=client.id,
            family_id=token.family_id,
            scope=scope,
            resource=token.resource,
            now=now,
            not_after=grant_ends,
        )
        body.update(answer)
        return records

    try:
        await store.tokens.rotate_refresh(token, now, successors)
    except RefreshReplayed:
        # RFC 9700 4.14.2: no grace period; a client that lost the answer signs in again
        raise invalid_grant("the refresh token was already used; its tokens are revoked") from None
    except RefreshExpired:
        raise invalid_grant("the refresh token is expired or revoked") from None
    except RefreshGrantEnded:
        raise invalid_grant("the grant behind this token was revoked or has expired") from None
    return body
