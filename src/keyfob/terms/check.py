"""Deciding one credential against the registry; the answer cites the rule it used.

The credential is judged as what it really is (``shapes.py``): normalised first, then a
JSON credentials file is judged by every string inside it and a JWT by its issuer and
claims, so no wrapping hides a forbidden credential. Forbidden rules are tried on every
view before any allowed rule, so a narrow forbidden form always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyfob.terms.registry import (
    CREDENTIAL_FILE,
    GENERIC_API_KEY,
    MALFORMED,
    NO_CREDENTIAL,
    RULES,
    Rule,
)
from keyfob.terms.shapes import claims_text, json_document, jwt_claims, normalise, strings_in

FORBIDDEN = tuple(r for r in RULES if r.verdict == "forbidden")


@dataclass(frozen=True)
class Verdict:
    rule: Rule

    @property
    def allowed(self) -> bool:
        return self.rule.verdict == "allowed"

    @property
    def credential_kind(self) -> str:
        return self.rule.credential

    @property
    def explanation(self) -> str:
        """A sentence fit for a person: the verdict, the rule and its source (no secret)."""
        word = "allowed" if self.allowed else "refused"
        return (
            f"credential {word} by the provider-terms registry: {self.rule.summary} "
            f"(rule {self.rule.credential!r}; source: {self.rule.source}; "
            f"checked {self.rule.checked})"
        )


def _forbidden(text: str) -> Rule | None:
    """The first forbidden rule matching ``text`` or, for a JWT, its issuer and claims."""
    views = [text]
    claims = jwt_claims(text)
    if claims is not None:
        views.append(claims_text(claims))
    for view in views:
        for rule in FORBIDDEN:
            if rule.matches(view):
                return rule
    return None


def classify(raw: str | None) -> Rule:
    """The rule that decides ``raw``, whatever was pasted around it."""
    text = normalise(raw or "")
    if not text:
        return NO_CREDENTIAL
    if text.startswith(("{", "[")):
        # a credentials file: the tokens inside decide (the most specific rule), then
        # the file's own markers (claudeAiOauth, "refresh_token", ...)
        values, keys = strings_in(json_document(text))
        for value in [*values, *keys]:
            found = _forbidden(normalise(value))
            if found is not None:
                return found
        return _forbidden(text) or CREDENTIAL_FILE
    found = _forbidden(text)
    if found is not None:
        return found
    # Credentials are printable ASCII: anything else left after normalising (a homoglyph,
    # a combining mark, a space) could only disguise one, so it is refused.
    if not text.isascii() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return MALFORMED
    for rule in RULES:
        if rule.matches(text):
            return rule
    return GENERIC_API_KEY


def check_credential(kind: str, api_key: str | None) -> Verdict:
    """The verdict on using ``api_key`` through an adapter of ``kind`` for a third-party app.

    ``kind`` is the adapter kind; today's rules recognise credentials by their own shape,
    which is what matters (a Claude OAuth token is forbidden whatever URL it is sent to).
    """
    return Verdict(classify(api_key))


def clean_credential(api_key: str | None) -> str | None:
    """What is stored and sent upstream: the normalised credential (None when empty)."""
    text = normalise(api_key or "")
    return text or None
