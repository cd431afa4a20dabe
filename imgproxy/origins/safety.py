"""Which addresses the proxy may connect to: public unicast only, unless configured otherwise.

Used by the connector on every connection (redirects included) with the addresses DNS gave,
and once more with the address actually connected to. IPv4 hidden inside IPv6 (mapped,
compatible, 6to4, NAT64) is unwrapped before judging; Teredo is refused outright.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the wrapping forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64 or ip in NAT64_LOCAL or int(ip) >> 32 == 0:
        # NAT64, and the deprecated IPv4-compatible ::a.b.c.d (which covers :: and ::1 too)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast


def parse_ip(text: str) -> IPAddress | None:
    """An IP address from a socket address or URL host ('[::1]' and '%scope' handled)."""
    text = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, allow_private: bool, allowed: Iterable[str]) -> AddressPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allowed:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(allow_private, frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: str) -> bool:
        """May we connect to `address`, reached as `host` (the URL's host name)?"""
        if self.allow_private or host.lower().rstrip(".") in self.hosts:
            return True
        ip = parse_ip(address)
        if ip is None:
            return False
        if any(_contains(net, ip) for net in self.networks):
            return True
        return is_public(ip)


def _contains(network: IPNetwork, ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and isinstance(network, ipaddress.IPv4Network):
        inner = embedded_ipv4(ip)
        return inner is not None and inner in network
    return ip.version == network.version and ip in network
