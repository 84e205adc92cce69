"""What a cross-origin request may do, as pure functions (no web framework, no store).

Three areas answer browsers on other origins, everything else stays same-origin:

- ``discovery`` (``/.well-known/*``): public metadata, readable by any origin with
  ``Access-Control-Allow-Origin: *`` and never with credentials.
- ``oauth`` (``/oauth/token``, ``/oauth/revoke``): only for a *public* client, and only
  from one of that client's own origins (its registered redirect URIs' origins, or for a
  Client ID Metadata Document the document's URL and its redirect URIs' origins).
- ``gateway`` (``/v1/*``): the bearer token names the client; the same origin rule.

Origins are compared exactly (scheme, host and port): a loopback redirect URI may vary
its port for a native app's one-off listener (RFC 8252), but a page is served from one
origin, and letting every port of 127.0.0.1 in would let any local web server read
answers meant for the app.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from urllib.parse import urlsplit

from keyfob.store.records import Client


class Area(enum.Enum):
    DISCOVERY = "discovery"
    OAUTH = "oauth"
    GATEWAY = "gateway"


OAUTH_PATHS = frozenset({"/oauth/token", "/oauth/revoke"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: How long a browser may cache a preflight answer (Chromium caps it at 2 hours).
PREFLIGHT_MAX_AGE_S = 600
MAX_ORIGIN_CHARS = 512
MAX_REQUEST_HEADERS_CHARS = 2048

#: Request headers the gateway's clients send: the OpenAI and Anthropic SDKs (their
#: ``x-stainless-*`` telemetry too), the Keyfob JS client, plain fetch.
GATEWAY_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "accept",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "idempotency-key",
    }
)
GATEWAY_HEADER_PREFIXES = ("x-stainless-",)
#: A public client's token or revocation request is a urlencoded form and nothing else:
#: no Authorization header (a public client has no secret to send).
OAUTH_HEADERS = frozenset({"content-type", "accept"})

METHODS = {
    Area.DISCOVERY: ("GET", "HEAD"),
    Area.OAUTH: ("POST",),
    Area.GATEWAY: ("GET", "POST"),
}

#: Response headers an app may read: cost and allowance, retry advice, request ids.
EXPOSED_HEADERS = ", ".join(
    (
        "x-keyfob-request-id",
        "x-keyfob-cost-usd",
        "x-keyfob-reserved-usd",
        "x-keyfob-allowance-left-usd",
        "x-keyfob-allowance-resets-at",
        "x-keyfob-downgraded-to",
        "x-keyfob-fallback-from",
        "x-keyfob-cost-estimated",
        "x-should-retry",
        "retry-after",
        "retry-after-ms",
        "www-authenticate",
        "x-request-id",
        "request-id",
    )
)


def area_of(path: str) -> Area | None:
    """The CORS area of a request path, or None (same-origin only)."""
    if path.startswith("/v1/"):
        return Area.GATEWAY
    if path in OAUTH_PATHS:
        return Area.OAUTH
    if path.startswith("/.well-known/"):
        return Area.DISCOVERY
    return None


def parse_origin(value: str) -> str | None:
    """The serialised origin (``scheme://host[:port]``, lower case, default port left
    out), or None for anything else: ``null`` (sandboxed frames, ``file:``, some
    redirects), paths, user info, other schemes, control characters."""
    if not value or len(value) > MAX_ORIGIN_CHARS or value == "null":
        return None
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    if value.endswith(":"):
        return None
    return _serialise(parts.scheme, parts.hostname, port)


def origin_of_uri(uri: str) -> str | None:
    """The web origin of a redirect URI or document URL; None for private-use schemes
    (``com.example.app:/cb``), which no page can be served from."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return _serialise(parts.scheme, parts.hostname, port)


def _serialise(scheme: str, host: str, port: int | None) -> str:
    host = host.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets in an origin
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def client_origins(client: Client) -> frozenset[str]:
    """The origins that belong to a public client; empty for a confidential one (its
    secret must never be in a browser, so no page may act as it)."""
    if not client.is_public:
        return frozenset()
    uris: list[str] = list(client.redirect_uris)
    if client.kind == "metadata_document":
        uris.append(client.id)  # the document's own URL: served by the app itself
    return frozenset(o for o in map(origin_of_uri, uris) if o is not None)


def allowed_request_headers(area: Area, requested: str) -> str | None:
    """The ``Access-Control-Allow-Headers`` value for a preflight's requested headers,
    or None when one of them is not accepted (the preflight then fails in the browser)."""
    if len(requested) > MAX_REQUEST_HEADERS_CHARS:
        return None
    names = [h.strip().lower() for h in requested.split(",") if h.strip()]
    if area is Area.DISCOVERY:
        # A public document: whatever a discovery client sends (MCP-Protocol-Version...)
        # changes nothing in the answer.
        return ", ".join(names) if all(_is_token(n) for n in names) else None
    allowed = GATEWAY_HEADERS if area is Area.GATEWAY else OAUTH_HEADERS
    prefixes = GATEWAY_HEADER_PREFIXES if area is Area.GATEWAY else ()
    for name in names:
        if name not in allowed and not (prefixes and name.startswith(prefixes)):
            return None
        if not _is_token(name):
            return None
    return ", ".join(names)


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _is_token(name: str) -> bool:
    return bool(name) and all(c in _TCHARS for c in name)


def method_allowed(area: Area, method: str) -> bool:
    return method.upper() in METHODS[area]


def same_origin(origin: str, own: Iterable[str]) -> bool:
    return origin in own
