"""The scope grammar (RFC 6749 3.3), one for the authorization and device endpoints."""

from __future__ import annotations

import re

MAX_SCOPE = 512
#: RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")


def well_formed(scope: str) -> bool:
    """An empty scope, or space-separated scope tokens of at most ``MAX_SCOPE`` in all."""
    return not scope or (len(scope) <= MAX_SCOPE and SCOPE.match(scope) is not None)
