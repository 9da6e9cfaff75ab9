"""Where devpid itself may connect: the guard against server-side request forgery (SSRF).

Mirror pages and webhook URLs name hosts devpid then connects to. Unless the admin allows it
(``--allow-private-addresses``), those connections never reach loopback, link-local,
private, multicast or otherwise reserved addresses. The check runs on the *resolved*
addresses of every connection, redirects included, and devpid connects to the address it
checked: a name that resolves to 127.0.0.1 (or changes its answer between check and
connect) cannot slip through. Replication to ``--primary-url`` is configured by the admin
and is not guarded.

Mirror files are further limited by host (see ``file_host_allowed``): the mirror's own
upstream host, the hosts an admin lists with ``--mirror-file-hosts``, and for a mirror of the
default upstream, that upstream's file host as pip publishes it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

CONNECT_TIMEOUT = 30.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(ierror.ConnectError):
    """A connection to an address the policy does not allow (nothing was sent)."""


def refusal(address: Address) -> str | None:
    """Why ``address`` is not a public unicast address, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private or reserved address"
    return None


def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) for every address ``host`` resolves to (blocking: run in a thread)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            out.append((int(family), str(sockaddr[0])))
    return out


class _GuardedEndpoint:
    """Resolves the host, refuses forbidden addresses, connects to the address it checked."""

    def __init__(self, factory: GuardedEndpointFactory, scheme: bytes, host: bytes,
                 port: int) -> None:
        self.factory = factory
        self.scheme = scheme
        self.host = host.decode("ascii", "replace")
        self.port = port

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        return ensureDeferred(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> Any:
        reactor = self.factory.reactor
        host = self.host.strip("[]")
        try:
            addresses = await deferToThreadPool(
                reactor, reactor.getThreadPool(), _resolve, host, self.port
            )
        except (OSError, UnicodeError) as e:
            raise ierror.DNSLookupError(f"{host}: {e}") from None
        if not addresses:
            raise ierror.DNSLookupError(f"{host}: no address")
        if not self.factory.allow_private:
            for _family, text in addresses:
                why = refusal(ipaddress.ip_address(text.split("%")[0]))
                if why:
                    raise RefusedAddress(
                        string=f"{host} resolves to {text}, {why} (refused; see "
                        "--allow-private-addresses)"
                    )
        last: Exception | None = None
        for family, address in addresses:  # in resolver order, as HostnameEndpoint would
            endpoint_class = (TCP6ClientEndpoint if family == socket.AF_INET6
                              else TCP4ClientEndpoint)
            endpoint: Any = endpoint_class(reactor, address, self.port, timeout=CONNECT_TIMEOUT)
            if self.scheme == b"https":
                creator = self.factory.tls.creatorForNetloc(self.host.encode("idna"), self.port)
                endpoint = wrapClientTLS(creator, endpoint)
            try:
                return await endpoint.connect(protocol_factory)
            except ierror.ConnectError as e:
                last = e
        assert last is not None
        raise last


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """An Agent endpoint factory applying the address policy to every connection."""

    def __init__(self, reactor: Any, *, allow_private: bool) -> None:
        self.reactor = reactor
        self.allow_private = allow_private
        self.tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> _GuardedEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        return _GuardedEndpoint(self, uri.scheme, uri.host, uri.port)


def guarded_agent(reactor: Any, pool: HTTPConnectionPool, *, allow_private: bool) -> Agent:
    """An Agent whose connections obey the address policy."""
    factory = GuardedEndpointFactory(reactor, allow_private=allow_private)
    return Agent.usingEndpointFactory(reactor, factory, pool=pool)


# -- host rules for mirror files ----------------------------------------------------------------
def host_of(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


@functools.cache
def default_upstream_file_hosts() -> list[str]:
    """The file host of the default upstream, from pip's published index model (not our
    literal); empty if pip does not say (the admin then lists it in --mirror-file-hosts)."""
    try:
        from pip._internal.models.index import PyPI
    except Exception:
        return []
    domain = getattr(PyPI, "file_storage_domain", None)
    return [domain.lower()] if isinstance(domain, str) and domain else []


def mirror_file_hosts(mirror_url: str, extra: Iterable[str]) -> set[str]:
    """Hosts a mirror's file URLs (and external-URL redirects) may point at."""
    from devpid.init import default_upstream_url

    hosts = {h.lower().rstrip(".") for h in extra if h}
    own = host_of(mirror_url)
    if own:
        hosts.add(own)
    if own and own == host_of(default_upstream_url()):
        hosts.update(default_upstream_file_hosts())
    return hosts


def file_host_allowed(url: str, mirror_url: str, extra: Iterable[str]) -> bool:
    hosts = mirror_file_hosts(mirror_url, extra)
    return "*" in hosts or host_of(url) in hosts


__all__ = [
    "GuardedEndpointFactory",
    "RefusedAddress",
    "file_host_allowed",
    "guarded_agent",
    "mirror_file_hosts",
    "refusal",
]
