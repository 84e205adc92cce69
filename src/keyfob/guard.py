"""The first thing every request meets: the Host allow-list and the trusted proxies.

Why a Host allow-list: a web page whose name an attacker points at 127.0.0.1 (DNS
rebinding) is same-origin with whatever listens there, so it could read Keyfob's pages
and post its forms. A browser always sends that page's own name as ``Host``; answering
only to Keyfob's own names closes the hole before any route runs.

Why explicit proxies: every per-address limit (logins, registrations, device codes) keys
on the client's address. Trusting ``X-Forwarded-For`` from anyone (uvicorn's default
trusts 127.0.0.1, which is every client of a personal server) lets a client pick a fresh
address per request. Keyfob runs uvicorn with proxy headers off and believes them here
only from the configured proxies (hosted mode), walking the chain from the right.
"""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping
from typing import Any

from keyfob.settings import Network, Settings, parse_networks

#: Loopback names a personal server answers to (with any port).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Paths answered whatever the Host (a load balancer's health check uses the pod's IP).
HOST_EXEMPT_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
_CACHE_MAX = 256


def host_name(value: str) -> str:
    """The name in a ``Host`` header, lower-cased, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """Personal mode: loopback names (and the listening host); hosted mode: the public
    URL's host. Configured extras in both."""
    from urllib.parse import urlsplit

    names = {host_name(h) for h in settings.allowed_hosts}
    names.add(host_name(urlsplit(settings.issuer).netloc))
    if settings.mode == "personal":
        names |= LOOPBACK_HOSTS
        names.add(host_name(settings.host))
    names.discard("")
    return frozenset(names)


class Guard:
    """Decides a request's Host and its client address; framework-free (ASGI scopes)."""

    def __init__(self, hosts: frozenset[str], proxies: tuple[Network, ...]) -> None:
        self.hosts = hosts
        self.proxies = proxies
        self._host_ok: dict[bytes, bool] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        return cls(allowed_hosts(settings), parse_networks(settings.trusted_proxies))

    def host_allowed(self, scope: MutableMapping[str, Any]) -> bool:
        if scope.get("path") in HOST_EXEMPT_PATHS:
            return True
        raw = b""
        for key, value in scope["headers"]:
            if key == b"host":
                if raw:
                    return False  # two Host headers: ambiguous, refused
                raw = value
        known = self._host_ok.get(raw)
        if known is None:
            try:
                known = bool(raw) and host_name(raw.decode("ascii")) in self.hosts
            except UnicodeDecodeError:
                known = False
            if len(self._host_ok) >= _CACHE_MAX:
                self._host_ok.clear()
            self._host_ok[raw] = known
        return known

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def apply_proxy(self, scope: MutableMapping[str, Any]) -> None:
        """Rewrite ``client`` (and ``scheme``) from a trusted proxy's forwarding headers.

        The rightmost address not itself a trusted proxy is the client: everything left
        of it was written by the client and proves nothing."""
        if not self.proxies:
            return
        client = scope.get("client")
        if not client or not self._trusted(client[0]):
            return
        chain: list[str] = []
        proto = None
        for key, value in scope["headers"]:
            if key == b"x-forwarded-for":
                chain.extend(p.strip() for p in value.decode("latin-1").split(","))
            elif key == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        for hop in reversed(chain):
            hop = hop.strip("[]")
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage in the chain: stop at the last address we could trust
            scope["client"] = (hop, 0)
            if not self._trusted(hop):
                break
        if proto in ("http", "https"):
            scope["scheme"] = proto
