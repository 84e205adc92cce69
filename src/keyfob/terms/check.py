"""Deciding one credential against the registry; the answer cites the rule it used."""

from __future__ import annotations

from dataclasses import dataclass

from keyfob.terms.registry import GENERIC_API_KEY, NO_CREDENTIAL, RULES, Rule


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


def check_credential(kind: str, api_key: str | None) -> Verdict:
    """The verdict on using ``api_key`` through an adapter of ``kind`` for a third-party app.

    ``kind`` is the adapter kind; today's rules recognise credentials by their own shape,
    which is what matters (a Claude OAuth token is forbidden whatever URL it is sent to).
    """
    if api_key is None or not api_key.strip():
        return Verdict(NO_CREDENTIAL)
    for rule in RULES:
        if rule.matches(api_key):
            return Verdict(rule)
    return Verdict(GENERIC_API_KEY)
