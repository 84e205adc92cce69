"""Client ID Metadata Documents (MCP authorization, 2026-07-28 revision).

An app that has not registered may use an https URL as its ``client_id``; the document at
that URL describes it (``client_id`` equal to the URL, ``client_name``, ``redirect_uris``).
Fetching a URL an attacker chose is a server-side request forgery risk, so the fetch is
strict: https only, no redirects, at most ``MAX_BYTES`` within ``TIMEOUT_S``, and every
address the host resolves to must be public; the connection then goes to exactly the
addresses that were checked (no second DNS answer can point it elsewhere). Personal mode
may allow loopback (``client_metadata_allow_loopback``) for local development and tests.

A fetched document is kept as a public client row and trusted for ``CACHE_TTL_S``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from keyfob import addresses, limits
from keyfob.oauth import rfc8252
from keyfob.oauth.clients import InvalidClient, check_name, check_redirect_uris
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.records import Client

MAX_BYTES = 5 * 1024
TIMEOUT_S = 3.0
CACHE_TTL_S = 300.0
MAX_URL = 255
ALLOWED_GRANT_TYPES = {
    "authorization_code",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:device_code",
}
#: Fields a public client's document must not carry (it has no secret, no keys we use).
FORBIDDEN_FIELDS = {"client_secret", "client_secret_expires_at", "jwks", "jwks_uri"}
KEPT_FIELDS = ("client_uri", "software_id", "software_version")


class MetadataDocumentError(ValueError):
    """The document could not be fetched or is not acceptable; the message says why."""


Fetch = Callable[[str, Settings], Awaitable[dict[str, Any]]]


def is_document_id(client_id: str) -> bool:
    return client_id.startswith(("https://", "http://"))


def _loopback_allowed(settings: Settings) -> bool:
    return settings.mode == "personal" and settings.client_metadata_allow_loopback


def check_url(url: str, settings: Settings) -> SplitResult:
    """The rules for a client_id URL (before anything is fetched)."""
    if len(url) > MAX_URL or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise MetadataDocumentError(f"a client_id URL has at most {MAX_URL} plain characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise MetadataDocumentError("the client_id is not a valid URL") from None
    if parts.scheme != "https" and not (
        parts.scheme == "http" and _loopback_allowed(settings) and rfc8252.is_loopback(url)
    ):
        raise MetadataDocumentError("a client_id URL must use https")
    if not parts.hostname or "@" in parts.netloc or parts.fragment or "#" in url:
        raise MetadataDocumentError("a client_id URL has a host, no user info, no fragment")
    segments = parts.path.split("/")
    if not parts.path or parts.path == "/" or any(s in (".", "..") for s in segments):
        raise MetadataDocumentError("a client_id URL has a path without . or .. segments")
    if port == 0:
        raise MetadataDocumentError("the client_id URL has no valid port")
    return parts


def address_allowed(address: str, settings: Settings) -> bool:
    """Only public addresses (loopback too when personal mode allows it), judged on the
    IPv4 address an IPv6 form carries (``addresses.effective``)."""
    try:
        ip = addresses.parse(address)
    except addresses.NotAnAddress:
        return False
    if addresses.is_loopback(ip):
        return _loopback_allowed(settings)
    return addresses.is_public(ip)


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses already checked, whatever DNS says now."""

    def __init__(self, addresses: list[tuple[int, str]]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for fam, address in self.addresses
        ]

    async def close(self) -> None:
        return None


#: How a host name becomes addresses: (family, address) pairs. Injected in tests.
Resolve = Callable[[str, int], Awaitable[list[tuple[int, str]]]]


async def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError:
        raise MetadataDocumentError(f"the client_id host {host!r} does not resolve") from None
    found = list(dict.fromkeys((int(info[0]), str(info[4][0])) for info in infos))
    if not found:
        raise MetadataDocumentError(f"the client_id host {host!r} does not resolve")
    return found


async def fetch_document(
    url: str, settings: Settings, resolve: Resolve | None = None
) -> dict[str, Any]:
    """GET the document with every limit applied; returns the parsed JSON object.

    The host is resolved once (``resolve``); every address must pass ``address_allowed``
    and the connection goes to exactly those addresses (``_PinnedResolver``), so a second
    DNS answer (rebinding) cannot move it."""
    parts = check_url(url, settings)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = parts.hostname.strip("[]")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            found = (
                await _resolve(literal, port)
                if _is_literal(literal) or resolve is None
                else await resolve(parts.hostname, port)
            )
            # connect to the checked form: a v6 form carrying v4 goes to that v4 address
            pinned = [_pinned(fam, a) for fam, a in found]
            refused = [a for _, a in found if not address_allowed(a, settings)]
            if refused:
                raise MetadataDocumentError(
                    "the client_id host resolves to a private or loopback address"
                )
            connector = aiohttp.TCPConnector(
                resolver=_PinnedResolver(pinned), use_dns_cache=False, force_close=True
            )
            async with (
                aiohttp.ClientSession(connector=connector, trust_env=False) as session,
                session.get(
                    url,
                    allow_redirects=False,
                    headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                ) as response,
            ):
                if response.status != 200:
                    raise MetadataDocumentError(
                        f"fetching the client_id URL answered {response.status} "
                        "(redirects are not followed)"
                    )
                ctype = response.headers.get("content-type", "").split(";", 1)[0].strip()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    raise MetadataDocumentError("the client metadata document is not JSON")
                declared = response.content_length
                if declared is not None and declared > MAX_BYTES:
                    raise MetadataDocumentError(f"the document is larger than {MAX_BYTES} bytes")
                body = await response.content.read(MAX_BYTES + 1)
                if len(body) > MAX_BYTES:
                    raise MetadataDocumentError(f"the document is larger than {MAX_BYTES} bytes")
    except TimeoutError:
        raise MetadataDocumentError(f"the document did not arrive within {TIMEOUT_S} s") from None
    except aiohttp.ClientError as exc:
        raise MetadataDocumentError(
            f"the client_id URL could not be fetched ({type(exc).__name__})"
        ) from None
    # The body reader's parser: strict, at most MAX_JSON_DEPTH deep, valid Unicode (a
    # document nested a few thousand deep fits in MAX_BYTES and made json.loads raise
    # RecursionError; a lone surrogate failed later, where the name is encoded).
    try:
        document = limits.parse_json(body)
    except limits.InvalidJson as exc:
        raise MetadataDocumentError(
            f"the client metadata document is not valid JSON: {exc}"
        ) from None
    if not isinstance(document, dict):
        raise MetadataDocumentError("the client metadata document is not a JSON object")
    return document


def _is_literal(host: str) -> bool:
    try:
        addresses.parse(host)
    except addresses.NotAnAddress:
        return False
    return True


def _pinned(family: int, address: str) -> tuple[int, str]:
    """The address to connect to: the checked one, an IPv4-mapped form as the IPv4
    address it stands for (what the check judged)."""
    try:
        ip = addresses.parse(address)
    except addresses.NotAnAddress:
        return family, address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return socket.AF_INET, str(ip.ipv4_mapped)
    return family, str(ip)


def validate_document(url: str, document: dict[str, Any]) -> tuple[str, list[str], str | None]:
    """(client_name, redirect_uris, extra metadata JSON) of an acceptable document."""
    if document.get("client_id") != url:
        raise MetadataDocumentError("the document's client_id is not the URL it was fetched from")
    forbidden = sorted(FORBIDDEN_FIELDS & set(document))
    if forbidden:
        raise MetadataDocumentError(f"a metadata document may not contain {forbidden}")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise MetadataDocumentError("only token_endpoint_auth_method 'none' is supported")
    grant_types = document.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not set(grant_types) <= ALLOWED_GRANT_TYPES:
        raise MetadataDocumentError("grant_types may only name the code, refresh and device grants")
    if document.get("response_types", ["code"]) != ["code"]:
        raise MetadataDocumentError("response_types must be ['code']")
    name, uris = document.get("client_name"), document.get("redirect_uris")
    if not isinstance(name, str):
        raise MetadataDocumentError("client_name is required")
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise MetadataDocumentError("redirect_uris must be a list of URIs")
    try:
        clean_name = check_name(name)
        clean_uris = check_redirect_uris(uris)
    except InvalidClient as exc:
        raise MetadataDocumentError(str(exc)) from None
    extra = {
        k: document[k]
        for k in KEPT_FIELDS
        if isinstance(document.get(k), str) and len(document[k]) <= 255
    }
    return clean_name, clean_uris, json.dumps(extra) if extra else None


async def resolve_client(
    store: Store,
    settings: Settings,
    client_id: str,
    *,
    now: float | None = None,
    fetch: Fetch = fetch_document,
) -> Client | None:
    """The client for ``client_id``: a stored one, or one described by a fresh document.

    Raises MetadataDocumentError when a URL client_id's document cannot be used."""
    if not is_document_id(client_id):
        return await store.clients.get(client_id) if len(client_id) <= 128 else None
    now = time.time() if now is None else now
    check_url(client_id, settings)
    known = await store.clients.get(client_id)
    if known is not None and known.kind != "metadata_document":
        return known
    if known is not None and known.fetched_at is not None and now - known.fetched_at < CACHE_TTL_S:
        return known
    document = await fetch(client_id, settings)
    name, uris, extra = validate_document(client_id, document)
    return await store.clients.save_document(
        client_id=client_id, name=name, redirect_uris=uris, metadata_json=extra, fetched_at=now
    )
