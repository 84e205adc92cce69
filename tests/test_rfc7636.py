"""PKCE (RFC 7636): S256 only, verifier syntax, constant-time verification."""

from __future__ import annotations

import pytest

from keyfob.oauth import rfc7636
from keyfob.oauth.errors import OAuthError

# RFC 7636 Appendix B
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_matches_rfc_appendix_b() -> None:
    assert rfc7636.s256(RFC_VERIFIER) == RFC_CHALLENGE


def test_s256_challenge_accepted() -> None:
    assert rfc7636.check_challenge(RFC_CHALLENGE, "S256") == RFC_CHALLENGE


@pytest.mark.parametrize("method", ["plain", None, "", "s256", "S512"])
def test_only_s256(method: str | None) -> None:
    with pytest.raises(OAuthError) as err:
        rfc7636.check_challenge(RFC_CHALLENGE, method)
    assert err.value.error == "invalid_request"


@pytest.mark.parametrize(
    "challenge", [None, "", "short", RFC_CHALLENGE + "A", RFC_CHALLENGE[:-1] + "=", "a" * 42 + "+"]
)
def test_missing_or_malformed_challenge(challenge: str | None) -> None:
    with pytest.raises(OAuthError):
        rfc7636.check_challenge(challenge, "S256")


def test_verify_ok() -> None:
    rfc7636.verify(RFC_VERIFIER, RFC_CHALLENGE)


def test_wrong_verifier_is_invalid_grant() -> None:
    with pytest.raises(OAuthError) as err:
        rfc7636.verify("x" * 43, RFC_CHALLENGE)
    assert err.value.error == "invalid_grant"


@pytest.mark.parametrize(
    "verifier", [None, "", "a" * 42, "a" * 129, "a" * 42 + "!", "a" * 42 + " ", "é" * 43]
)
def test_verifier_syntax(verifier: str | None) -> None:
    with pytest.raises(OAuthError) as err:
        rfc7636.verify(verifier, RFC_CHALLENGE)
    assert err.value.error == "invalid_request"


@pytest.mark.parametrize("length", [43, 128])
def test_verifier_length_bounds(length: int) -> None:
    verifier = ("abc-._~XYZ" * 13)[:length]
    rfc7636.verify(verifier, rfc7636.s256(verifier))
