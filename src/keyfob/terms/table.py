"""The registry as rows a person can read (``keyfob terms``)."""

from __future__ import annotations

from keyfob.terms.registry import (
    CREDENTIAL_FILE,
    GENERIC_API_KEY,
    MALFORMED,
    NO_CREDENTIAL,
    RULES,
)

HEADERS = ("credential", "third-party apps", "rule", "source", "checked")


def rows() -> list[tuple[str, str, str, str, str]]:
    return [
        (r.credential, r.verdict, r.summary, r.source, r.checked)
        for r in (*RULES, CREDENTIAL_FILE, MALFORMED, GENERIC_API_KEY, NO_CREDENTIAL)
    ]
