"""Which IP addresses a server-side request may reach (SSRF), decided on the address
the connection will really go to.

Why normalise first: IPv6 has several forms that carry an IPv4 address and reach it
(IPv4-mapped ``::ffff:a.b.c.d``, the deprecated IPv4-compatible ``::a.b.c.d``, SIIT's
``::ffff:0:a.b.c.d``, NAT64
``64:ff9b::/96`` and its local-use ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo).
Python's ``is_global`` judges the IPv6 wrapper, and calls ``[::127.0.0.1]`` or
``[64:ff9b::7f00:1]`` global; Keyfob judges the IPv4 inside instead.
"""

from __future__ import annotations

import ipaddress

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: RFC 8215 local-use NAT64: the IPv4 sits at an operator-chosen offset, so the whole
#: prefix is refused (it is never a public destination anyway).
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
#: SIIT's IPv4-translated form (RFC 2765), ``::ffff:0:a.b.c.d``.
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
#: Deprecated site-local addresses that ``is_global`` still calls global.
SITE_LOCAL = ipaddress.ip_network("fec0::/10")


class NotAnAddress(ValueError):
    pass


def parse(address: str) -> IP:
    """An address literal (``[v6]``, zone ids and all) as an ``ipaddress`` object."""
    text = address.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise NotAnAddress(address) from None


def effective(ip: IP) -> IP:
    """The IPv4 address an IPv6 form carries (and reaches), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or ip in IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address (Python undoes the obfuscation)
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # "::" and "::1" are IPv6's own
        return ipaddress.IPv4Address(int(ip))
    return ip


def is_public(ip: IP) -> bool:
    """A globally routable unicast destination, judged on the address really reached."""
    if isinstance(ip, ipaddress.IPv6Address) and (ip in NAT64_LOCAL or ip in SITE_LOCAL):
        return False
    target = effective(ip)
    return bool(target.is_global) and not target.is_multicast


def is_loopback(ip: IP) -> bool:
    return bool(effective(ip).is_loopback)
