"""Redirect URI rules (RFC 8252 for native apps, RFC 9700 for everyone).

Exact string matching is the only safe comparison: prefix or pattern matching has been
the root of most redirect-based token theft. The single exception is RFC 8252 7.3:
a native app listening on a loopback IP literal gets an ephemeral port from the OS, so
for ``http://127.0.0.1`` and ``http://[::1]`` the port may differ from the registered
one while everything else (scheme, host, path, query) must still match exactly.
``localhost`` gets no exception (it can resolve elsewhere; RFC 8252 8.3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_LENGTH = 2000

#: Loopback IP literal with an optional port; nothing else may be in the authority.
_LOOPBACK_AUTHORITY = re.compile(r"^(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?$")
_FORBIDDEN_SCHEMES = {"javascript", "data", "vbscript", "file", "about", "blob"}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")


class BadRedirectURI(ValueError):
    """A redirect URI that may not be registered."""


def check_registrable(uri: str) -> str:
    """Validate a redirect URI an app wants to register; returns it unchanged."""
    if not uri or len(uri) > MAX_LENGTH:
        raise BadRedirectURI(f"a redirect URI has 1-{MAX_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri) or "\\" in uri:
        raise BadRedirectURI(f"redirect URI contains spaces or control characters: {uri!r}")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise BadRedirectURI(f"not a valid URI: {uri!r}") from exc
    scheme = parts.scheme
    if not scheme or not _SCHEME.match(scheme) or uri[: len(scheme)] != scheme:
        raise BadRedirectURI(f"redirect URI needs a lower-case scheme: {uri!r}")
    if scheme in _FORBIDDEN_SCHEMES:
        raise BadRedirectURI(f"the {scheme}: scheme cannot be a redirect URI")
    if "#" in uri:
        raise BadRedirectURI("a redirect URI must not contain a fragment (RFC 6749 3.1.2)")
    if "@" in parts.netloc:
        raise BadRedirectURI("a redirect URI must not contain user information")
    if "%" in parts.netloc:
        raise BadRedirectURI("a redirect URI host may not be percent-encoded or carry a zone id")
    if "*" in uri:
        raise BadRedirectURI("redirect URIs are matched exactly: wildcards are not supported")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise BadRedirectURI(f"redirect URI has no host: {uri!r}")
        if scheme == "http" and not is_loopback(uri) and parts.hostname != "localhost":
            raise BadRedirectURI(
                "plain http is allowed only for loopback redirect URIs "
                "(http://127.0.0.1 or http://[::1]); use https"
            )
    elif "." not in scheme:
        # RFC 8252 7.1: private-use schemes are reverse domain names (com.example.app:/cb).
        raise BadRedirectURI(
            "a private-use URI scheme must be a reverse domain name "
            f"such as com.example.app: got {scheme!r}"
        )
    return uri


def is_loopback(uri: str) -> bool:
    """True for ``http://127.0.0.1[:port]/...`` and ``http://[::1][:port]/...``."""
    if not uri.startswith("http://"):
        return False
    authority = uri[len("http://") :].split("/", 1)[0].split("?", 1)[0]
    return _LOOPBACK_AUTHORITY.match(authority) is not None


def _without_port(uri: str) -> str:
    rest = uri[len("http://") :]
    cut = len(rest)
    for sep in ("/", "?"):
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    authority, tail = rest[:cut], rest[cut:]
    m = _LOOPBACK_AUTHORITY.match(authority)
    assert m is not None
    return f"http://{m.group(1)}{tail or '/'}"


def matches(requested: str, registered: Iterable[str]) -> bool:
    """Does ``requested`` match one of the registered redirect URIs?"""
    if not requested or len(requested) > MAX_LENGTH or "#" in requested:
        return False
    requested_loopback = is_loopback(requested)
    for candidate in registered:
        if requested == candidate:
            return True
        if requested_loopback and is_loopback(candidate):
            port = _LOOPBACK_AUTHORITY.match(
                requested[len("http://") :].split("/", 1)[0].split("?", 1)[0]
            )
            if port and port.group(2) is not None and not 0 < int(port.group(2)) < 65536:
                continue
            if _without_port(requested) == _without_port(candidate):
                return True
    return False
