"""PKCE (RFC 7636), stricter than the RFC as OAuth 2.1 and RFC 9700 ask: S256 only.

``plain`` offers no protection when the authorization request leaks, and a missing
challenge would turn the code into a bearer credential, so both are refused. The code
challenge must be exactly what S256 produces (43 base64url characters), which also keeps
arbitrary data out of the session and the database.
"""

from __future__ import annotations

import base64
import hashlib
import re

from keyfob.oauth.errors import OAuthError
from keyfob.tokens import equal

SUPPORTED_METHODS = ("S256",)

#: RFC 7636 4.1: code-verifier = 43*128unreserved
VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
#: BASE64URL(SHA256(verifier)) without padding is always 43 characters.
S256_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(challenge: str | None, method: str | None) -> str:
    """Validate an authorization request's challenge; returns it. Raises OAuthError."""
    if not challenge:
        raise OAuthError("invalid_request", "code_challenge is required (PKCE, S256)")
    if method != "S256":
        # RFC 7636 4.3 defaults a missing method to "plain", which is refused too.
        raise OAuthError(
            "invalid_request", "code_challenge_method must be S256 (plain is not supported)"
        )
    if not S256_CHALLENGE.match(challenge):
        raise OAuthError("invalid_request", "code_challenge is not a S256 challenge")
    return challenge


def verify(verifier: str | None, challenge: str) -> None:
    """Check a token request's verifier against the stored challenge. Raises OAuthError."""
    if not verifier:
        raise OAuthError("invalid_request", "code_verifier is required")
    if not VERIFIER.match(verifier):
        raise OAuthError("invalid_request", "code_verifier must be 43-128 unreserved characters")
    if not equal(s256(verifier), challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
