"""Which peers may tell devpid how clients reach it (``--trusted-proxy``).

``Host``, ``X-Outside-Url`` and ``X-Real-IP`` are whatever the sender writes. Taken from
anyone, they let a client choose the links and redirects devpid hands to others (a page
cached with a forged origin, an open redirect) and the address its login rate limit counts.
So they are believed only from the configured proxy addresses (default: loopback, which is
where the generated nginx connects from); for every other peer links are built from
``--outside-url``, else from the local address the connection arrived on, which the client
cannot choose.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

DEFAULT_TRUSTED = ["127.0.0.1", "::1"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """Addresses or CIDR networks; ValueError names a bad entry."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {entry!r}") from None
    return networks


class TrustedProxies:
    """The ``--trusted-proxy`` list, asked per request (cheap: usually one or two networks)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = parse_networks(entries)
        self._known: dict[str, bool] = {}
        # Loopback ports where only this server's own --workers forward writes: always trusted
        # (a worker sends what it concluded under these same rules).
        self.internal_ports: set[int] = set()

    def trusts(self, request: Any) -> bool:
        """Whether the request's direct peer is a trusted proxy."""
        host = getattr(request.getClientAddress(), "host", None)
        if not isinstance(host, str):
            return False
        if self.internal_ports and host == "127.0.0.1" and getattr(
                request.getHost(), "port", None) in self.internal_ports:
            return True
        known = self._known.get(host)
        if known is None:
            known = self._check(host)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[host] = known
        return known

    def _check(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def local_origin(request: Any, fallback: str) -> str:
    """``scheme://address:port`` of the socket the request arrived on (``fallback``, as
    ``host:port``, for sockets without one, e.g. a Unix socket)."""
    scheme = "https" if request.isSecure() else "http"
    local = request.getHost()
    host, port = getattr(local, "host", None), getattr(local, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return f"{scheme}://{fallback}"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
