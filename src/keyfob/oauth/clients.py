"""Registering apps (OAuth clients); shared by ``keyfob apps add`` and the web page.

A confidential app gets a secret exactly once: only its SHA-256 is stored (the secret
has 256 random bits, so a plain hash cannot be brute-forced), and the plaintext is
returned to the caller to show the developer, never logged.
"""

from __future__ import annotations

from keyfob.oauth import rfc8252
from keyfob.store import Store
from keyfob.store.records import Client, User
from keyfob.tokens import Kind, hash_token, new_token

MAX_NAME = 128
MAX_REDIRECT_URIS = 10


class InvalidClient(ValueError):
    """The app's registration data is not acceptable; the message says why."""


def check_name(name: str) -> str:
    clean = " ".join(name.split())
    if not clean:
        raise InvalidClient("an app needs a name")
    if len(clean) > MAX_NAME:
        raise InvalidClient(f"an app name has at most {MAX_NAME} characters")
    if not clean.isprintable():
        raise InvalidClient("an app name may not contain control characters")
    return clean


def check_redirect_uris(redirect_uris: list[str]) -> list[str]:
    uris = [u.strip() for u in redirect_uris if u.strip()]
    if not uris:
        raise InvalidClient("an app needs at least one redirect URI")
    if len(uris) > MAX_REDIRECT_URIS:
        raise InvalidClient(f"an app has at most {MAX_REDIRECT_URIS} redirect URIs")
    for uri in uris:
        try:
            rfc8252.check_registrable(uri)
        except rfc8252.BadRedirectURI as exc:
            raise InvalidClient(str(exc)) from None
    return list(dict.fromkeys(uris))


async def register_app(
    store: Store,
    *,
    name: str,
    redirect_uris: list[str],
    public: bool,
    registered_by: User | None = None,
) -> tuple[Client, str | None]:
    """Register an app. Returns the client and, for a confidential app, its secret (once).

    Public apps (native, CLI, single-page) cannot keep a secret and rely on PKCE alone;
    confidential apps (server-side web apps) also authenticate at the token endpoint.
    Any person may register apps (``registered_by``); an admin's are verified at once,
    a member's once an admin marks them (consent shows which).
    """
    clean_name = check_name(name)
    uris = check_redirect_uris(redirect_uris)
    secret = None if public else new_token(Kind.CLIENT_SECRET)
    client = await store.clients.add(
        name=clean_name,
        redirect_uris=uris,
        is_public=public,
        secret_hash=hash_token(secret) if secret else None,
        registered_by=registered_by.id if registered_by else None,
        verified=registered_by is not None and registered_by.is_admin,
    )
    return client, secret
