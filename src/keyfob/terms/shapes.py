"""What a pasted credential really is: normalised text, JSON credential files, JWTs.

Why: the registry's rules recognise credentials by their shape, so anything that hides
the shape hides the credential. A zero-width space or a BOM in front of ``sk-ant-oat01-``,
a ``Bearer `` prefix, a whole ``.credentials.json`` or a ChatGPT access token (a JWT,
which has no prefix at all) all slipped past prefix matching, were stored, and were then
sent upstream. Everything here is pure string work: no network, no secrets logged.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from typing import Any

#: Characters that show as nothing, which a paste (or someone hiding a credential's
#: shape) brings along and no credential contains: Unicode's default-ignorable code points
#: (soft hyphen, combining grapheme joiner, Hangul fillers, Khmer inherent vowels,
#: Mongolian selectors, zero-width characters, bidi marks, variation selectors, BOM,
#: halfwidth filler, tags) and the braille blank. Every format character (category Cf)
#: goes too (``_visible``), whatever Unicode adds to it later.
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
#: Labels people paste along with the value (``Authorization: Bearer sk-...``).
PREFIXES = re.compile(
    r"^(?:(?:authorization|x-api-key|api[-_ ]?key)\s*[:=]\s*)?(?:bearer\s+)?", re.I
)
QUOTES = ("\"'`", "\"'`")
JWT = re.compile(r"^[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$")
#: Bounds on what a JSON credential file may make us walk.
MAX_STRINGS = 512
MAX_DEPTH = 16


def _visible(text: str) -> str:
    if text.isascii():  # every API key: nothing to strip
        return text
    text = INVISIBLE.sub("", text)
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def normalise(raw: str) -> str:
    """The credential as an upstream would see it, without what a paste adds around it.
    What remains outside ASCII is visible and in no credential: ``check.classify``
    refuses it as malformed."""
    text = _visible(raw).strip()
    for _ in range(3):  # 'Bearer "sk-..."', "'Authorization: Bearer sk-...'"
        before = text
        if len(text) >= 2 and text[0] == text[-1] and text[0] in QUOTES[0]:
            text = text[1:-1].strip()
        text = PREFIXES.sub("", text, count=1).strip()
        if text == before:
            break
    return text


def json_document(text: str) -> Any | None:
    """The parsed JSON when ``text`` is a JSON object or array (a credential file)."""
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def strings_in(document: Any) -> tuple[list[str], list[str]]:
    """(string values, object keys) of a JSON document, bounded in number and depth."""
    values: list[str] = []
    keys: list[str] = []
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack and len(values) + len(keys) < MAX_STRINGS:
        node, depth = stack.pop()
        if isinstance(node, str):
            values.append(node)
        elif depth < MAX_DEPTH and isinstance(node, dict):
            keys.extend(str(k) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif depth < MAX_DEPTH and isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return values, keys


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def jwt_claims(text: str) -> dict[str, Any] | None:
    """The payload of a JWT (unverified: only its shape and issuer matter here)."""
    if not JWT.match(text):
        return None
    head, payload, _sig = text.split(".")
    try:
        header, claims = _b64json(head), _b64json(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(claims, dict):
        return None
    return claims


def claims_text(claims: dict[str, Any]) -> str:
    """Issuer, audience and claim names as one searchable line (no token material)."""
    parts = [str(claims.get("iss", "")), str(claims.get("aud", "")), *map(str, claims)]
    return " ".join(parts)
