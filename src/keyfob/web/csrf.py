"""CSRF protection for every POST form: a per-session token in a hidden field.

The session cookie is SameSite=Lax already, but Lax still lets top-level POSTs through
in some browsers' legacy modes and does nothing against same-site attackers; a token the
attacker cannot read closes both. Compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

FIELD = "csrf_token"
_KEY = "csrf"


def token(session: dict[str, Any]) -> str:
    """The session's CSRF token, created on first use."""
    value = session.get(_KEY)
    if not isinstance(value, str) or len(value) < 32:
        value = secrets.token_urlsafe(32)
        session[_KEY] = value
    return value


def valid(session: dict[str, Any], submitted: str | None) -> bool:
    expected = session.get(_KEY)
    if not isinstance(expected, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), submitted.encode("utf-8"))
