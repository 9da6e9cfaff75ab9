"""What the daemon says first: where installers go, which serverdir, offline mode, a short
error for a mistyped option, and a default log without Twisted's factory chatter."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    PredicateResult,
)
from zope.interface import implementer

import devpid
from devpid.domain import keys

log = Logger(namespace="devpid")

# Logged at info level for every listening port and every pooled upstream connection.
_CHATTER = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


@implementer(ILogFilterPredicate)
class _NotChatter:
    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        if event.get("log_format") in _CHATTER:
            return PredicateResult.no
        return PredicateResult.maybe


def quiet(observer: ILogObserver) -> ILogObserver:
    """``observer`` without "Starting factory" / "Stopping factory" lines."""
    return FilteringLogObserver(observer, [_NotChatter()])


def version_text() -> str:
    return f"devpid {devpid.__version__}"


def usage_hint(command: str, error: Exception) -> str:
    """The error first, then one line saying where the options are listed."""
    return f"{command}: error: {error}\n{command}: see '{command} --help' for the options"


def generated_password_text(password: str, serverdir: Any) -> str:
    return (f"devpid: generated root password (shown once, keep it): {password}\n"
            f"devpid: to set a new one: devpid passwd root --serverdir {serverdir}")


def server_url(settings: Any) -> str:
    """The URL people and installers use: --outside-url, else the address listened on."""
    if settings.outside_url:
        return str(settings.outside_url).rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def announce(server: Any) -> None:
    """Log the first screen: URL for installers and browsers, serverdir, offline mode."""
    settings = server.settings
    url = server_url(settings)
    stages = [keys.stage_name(key) for key in server.store.keys(keys.INDEXES)]
    stage = "root/pypi" if "root/pypi" in stages else (stages[0] if stages else None)
    log.info("{version} serving {url}/ (open it in a browser for the web view)",
             version=version_text(), url=url)
    if stage:
        log.info("installers: pip install --index-url {url}/{stage}/+simple/ PROJECT",
                 url=url, stage=stage)
    else:
        log.info("no index yet: create one with devpi-client (devpi index -c NAME)")
    log.info("serverdir: {serverdir}", serverdir=str(settings.serverdir))
    if settings.offline_mode:
        log.info("offline mode: upstreams are never asked; only cached files are served")
    if settings.role == "replica":
        log.info("replica of {primary}", primary=settings.primary_url)


class Announcement(service.Service):
    """Announces once the site listens (the port is known then, even with --port 0)."""

    def __init__(self, server: Any, site_service: Any = None) -> None:
        self.server = server
        self.site_service = site_service

    def startService(self) -> None:
        super().startService()
        waiting = getattr(self.site_service, "_waitingForPort", None)
        if waiting is None:  # already bound (--workers) or no site in this process
            announce(self.server)
            return

        def listening(port: Any) -> Any:
            self.server.settings.port = port.getHost().port
            announce(self.server)
            return port

        waiting.addCallback(listening)
