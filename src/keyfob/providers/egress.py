"""Where a hosted server's upstream connections may go (SSRF by DNS rebinding).

Why at the connector: a provider's base URL is checked when it is linked, but a name that
resolved to a public address then can point at a private one (or 169.254.169.254, the
cloud metadata service) later, and the gateway would relay that answer to whoever holds a
token. So in hosted mode the one upstream session checks *every* answer as it is used:
``CheckedResolver`` resolves once, judges each address with ``addresses`` rules (IPv6 forms
carrying an IPv4 address are judged on that address) and hands aiohttp only the addresses
it checked, so the connection goes exactly there; ``CheckedConnector`` applies the same
rule to address literals, which aiohttp never gives to a resolver. A name with any refused
answer is refused whole. Addresses a deployment deliberately serves from (a model server
on its own network) are allowed by ``Settings.upstream_allow_private`` (CIDRs,
``KEYFOB_UPSTREAM_ALLOW_PRIVATE``). Personal mode keeps loopback and local upstreams
(Ollama, llama.cpp) and uses a plain connector.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from keyfob import addresses
from keyfob.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: How a host name becomes (family, address) pairs; injected in tests (never real DNS).
Resolve = Callable[[str, int], Awaitable[list[tuple[int, str]]]]
#: aiohttp's DNS cache: answers were checked when they were cached, so reusing them is safe.
DNS_CACHE_S = 300


class EgressRefused(OSError):
    """An upstream address outside what this server may reach; aiohttp reports it as a
    connection failure (``ClientConnectorError``), before any byte is sent."""


def parse_allowed(entries: Iterable[str]) -> tuple[Network, ...]:
    """The allow-list as networks (``Settings.check_safe`` has refused bad entries)."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def allowed(ip: addresses.IP, allow: Sequence[Network] = ()) -> bool:
    """Public (judged on the IPv4 an IPv6 form carries), or inside the allow-list (matched
    on the address itself: an allowed 127.0.0.1 does not allow ``::127.0.0.1``)."""
    if any(ip in net for net in allow):
        return True
    return addresses.is_public(ip)


def checked(address: str, allow: Sequence[Network] = ()) -> tuple[int, str]:
    """(family, address) to connect to for one answer, or EgressRefused. An IPv4-mapped
    form connects to the IPv4 address it stands for, which is what is judged."""
    try:
        ip = addresses.parse(address)
    except addresses.NotAnAddress:
        raise EgressRefused(f"not an address: {address!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not allowed(ip, allow):
        raise EgressRefused("the upstream resolves to a loopback or private address")
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


async def system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    """The operating system's answers for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys((int(info[0]), str(info[4][0])) for info in infos))


async def check_host(
    host: str, port: int, allow: Sequence[Network] = (), resolve: Resolve | None = None
) -> list[tuple[int, str]]:
    """Every address ``host`` resolves to, checked (EgressRefused if any is refused or
    there is none). A literal is its own answer."""
    try:
        literal = addresses.parse(host)
    except addresses.NotAnAddress:
        found = await (resolve or system_resolve)(host, port)
    else:
        found = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET, str(literal))]
    if not found:
        raise EgressRefused(f"{host!r} has no address")
    return list(dict.fromkeys(checked(address, allow) for _family, address in found))


class CheckedResolver(AbstractResolver):
    """aiohttp resolver answering only with addresses that passed ``checked``."""

    def __init__(self, allow: Sequence[Network] = (), resolve: Resolve | None = None) -> None:
        self.allow = tuple(allow)
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pairs = await check_host(host, port, self.allow, self._resolve)
        if family in (socket.AF_INET, socket.AF_INET6):
            pairs = [p for p in pairs if p[0] == family] or pairs
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for fam, address in pairs
        ]

    async def close(self) -> None:
        return None


class CheckedConnector(aiohttp.TCPConnector):
    """A TCP connector whose every destination passed ``checked``: names through its
    ``CheckedResolver``; address literals (which aiohttp connects to without asking a
    resolver) here, before anything is opened."""

    def __init__(self, allow: Sequence[Network] = (), resolve: Resolve | None = None, **kw: Any):
        self.allow = tuple(allow)
        super().__init__(resolver=CheckedResolver(self.allow, resolve), **kw)

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        try:
            addresses.parse(host)
        except addresses.NotAnAddress:
            pass
        else:
            checked(host, self.allow)
        return await super()._resolve_host(host, port, traces=traces)  # type: ignore[arg-type]


def connector(
    settings: Settings, resolve: Resolve | None = None, **kw: Any
) -> aiohttp.TCPConnector:
    """The connector for upstream calls: checked in hosted mode, plain in personal mode."""
    if settings.mode == "hosted":
        return CheckedConnector(parse_allowed(settings.upstream_allow_private), resolve, **kw)
    return aiohttp.TCPConnector(**kw)


def session(
    settings: Settings,
    resolve: Resolve | None = None,
    *,
    timeout: aiohttp.ClientTimeout,
    **kw: Any,
) -> aiohttp.ClientSession:
    """An upstream client session (the server's pooled one, or a one-off for the CLI)."""
    return aiohttp.ClientSession(
        connector=connector(settings, resolve, **kw), timeout=timeout, trust_env=False
    )
