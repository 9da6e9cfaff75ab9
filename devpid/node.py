"""One devpid process, built in one place: its typed service graph and its shutdown order.

``build_node`` is the only code that constructs a DevpidServer and the services around it;
``twistd devpid`` (tap.py) calls it for the main process and ``devpid.workers`` for each
worker of ``--workers N``. The role decides what runs::

    Node.root  (OrderedServices: started top to bottom, stopped bottom to top, one at a time)
      StoreService        starts the store's write thread (PostgreSQL); closes the store:
                          last of all
      LogsService         flushes the access log, closes the audit log
      pools               the worker thread pool and the bcrypt pool
      ExternalCommits     polls for other processes' commits (--workers only)
      loops               mirror (its HTTP pools), mirror cache index*, replica follower**,
                          database follower* (PostgreSQL), events*, blob gc*  (stopped
                          together)
      DrainService        waits for requests in progress (at most SHUTDOWN_GRACE seconds)
      private port*       the loopback port workers forward writes to (--workers only)
      WorkerSupervisor*   the worker processes, each stopped the same way (--workers only)
      site                the listening socket: the first thing to stop
      Announcement        the start-up lines (URLs, serverdir)

    *  main process only    ** a replica's main process only

So on SIGTERM no new connection is accepted, requests in progress finish (and may still
commit, e.g. a mirror page fetched late), loops stop, logs are flushed, and only then is the
store closed: no request meets a closed store.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from devpid import blobgc, events, firstscreen, workers
from devpid.domain import keys
from devpid.links import track_commits
from devpid.memo import CommitClearedDict
from devpid.mirror.cache import MirrorCache, MirrorCacheService
from devpid.mirror.service import Mirror, MirrorService
from devpid.replica import NonceGuard, PrimaryFeed, ReplicaFollower, WriteProxy
from devpid.store import DB_NAME, open_store
from devpid.store.base import Store, StoreError
from devpid.web.app import DevpidServer, DevpidSite, Settings, make_site
from devpid.web.fastpath import stored_paths
from devpid.web.html.readme import DescriptionCache
from devpid.web.html.search import Search
from devpid.web.projects import post_json_hook
from devpid.web.simple import PageCache, index_get_hook
from devpid.web.upload import handle_post

log = Logger()

Role = Literal["main", "worker"]
SHUTDOWN_GRACE = 10.0  # seconds requests in progress get to finish after SIGTERM
DRAIN_POLL = 0.05


# -- services of the graph --------------------------------------------------------------------
class OrderedServices(service.MultiService):
    """Starts children in order and stops them in reverse, each after the previous one has
    finished stopping (MultiService stops them all at once: the store would close while a
    request still runs)."""

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return ensureDeferred(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed; stopping the rest",
                            name=child.name or type(child).__name__)


class ThreadPoolService(service.Service):
    """Starts and stops a pool for blocking work (bcrypt, hashing, archives)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class StoreService(service.Service):
    """Starts the store's write thread (PostgreSQL) and closes the store; the first child of
    the root, so it stops after everything else."""

    def __init__(self, store: Store, reactor: Any) -> None:
        self.store = store
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        start_writer = getattr(self.store, "start_writer", None)
        if start_writer is not None:
            start_writer(self.reactor)

    def stopService(self) -> None:
        super().stopService()
        self.store.close()


class LogsService(service.Service):
    """Writes out what the site logged last (access lines, audit rows) once requests are done."""

    def __init__(self, site: DevpidSite) -> None:
        self.site = site

    def stopService(self) -> Any:
        super().stopService()
        if self.site.access is not None:
            self.site.access.flush()
        audit, self.site.audit = self.site.audit, None
        if audit is not None:
            return audit.close()  # a Deferred: the queued rows written, then the store
        return None


class DrainService(service.Service):
    """On stop (after the site stopped listening): ends held-open changelog streams, closes
    idle connections and waits, at most ``grace`` seconds, for requests in progress."""

    def __init__(self, reactor: Any, site: DevpidSite, feed: PrimaryFeed, who: str,
                 grace: float = SHUTDOWN_GRACE) -> None:
        self.who = who  # "main process" or "worker N", for the log
        self.reactor = reactor
        self.site = site
        self.feed = feed
        self.grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._drain())

    def _busy(self) -> list[Any]:
        """Connections answering a request; idle ones (keep-alive, no request) are closed."""
        busy = []
        for channel in list(self.site.devpid_connections.open):
            if channel.devpid_waiting_since is None:
                busy.append(channel)
            else:
                channel.transport.loseConnection()
        return busy

    async def _drain(self) -> None:
        self.feed.end_streams()
        deadline = self.reactor.seconds() + self.grace
        told = False
        while busy := self._busy():
            if self.reactor.seconds() >= deadline:
                log.warn("stopping {who}: {count} request(s) in progress after {grace}s; "
                         "closing their connections", who=self.who, count=len(busy),
                         grace=self.grace)
                for channel in busy:
                    channel.transport.abortConnection()
                return
            if not told:
                told = True
                log.info("stopping {who}: waiting for {count} request(s) in progress "
                         "(at most {grace}s)", who=self.who, count=len(busy), grace=self.grace)
            await deferLater(self.reactor, DRAIN_POLL, lambda: None)


class _AdoptedSite(service.Service):
    """Serves a site on an already listening socket (shared with worker processes)."""

    def __init__(self, reactor: Any, fileno: int, family: int, factory: Any) -> None:
        self.reactor, self.fileno, self.family, self.factory = reactor, fileno, family, factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.adoptStreamPort(self.fileno, self.family, self.factory)

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening() if self.port is not None else None


class _ListeningPort(service.Service):
    """A port bound while building (its number is needed then); stops listening on stop."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()


# -- the node -----------------------------------------------------------------------------------
@dataclass
class Node:
    """One process's service graph: the server handlers see, and the services it runs."""

    role: Role
    server: DevpidServer
    site: DevpidSite
    root: OrderedServices
    mirror: MirrorService
    drain: DrainService
    mirror_cache: MirrorCacheService | None = None
    replica: ReplicaFollower | None = None
    events: events.EventService | None = None
    gc: blobgc.BlobGCService | None = None
    supervisor: workers.WorkerSupervisor | None = None
    shared_socket: socket.socket | None = None  # --workers: kept open for the workers


def build_node(
    settings: Settings,
    role: Role,
    *,
    secret: bytes,
    reactor: Any,
    secretfile: Path | None = None,
    listen: str | None = None,
    portfile: Path | None = None,
    main_url: str | None = None,
    worker_index: int = 0,
    inherited_fd: int = 3,
) -> Node:
    """Open the store and build the whole graph of one process (no listening yet, except a
    ``--workers`` main process's sockets, whose ports the workers need).

    ``main`` serves on ``listen`` (a Twisted endpoint; default ``--host``/``--port``), or with
    ``settings.workers > 1`` on a shared socket plus a private port for the workers' writes;
    a ``worker`` serves reads on the socket at ``inherited_fd`` and forwards writes to
    ``main_url``.
    """
    try:
        store, blobs = open_store(settings.serverdir)
    except StoreError as e:  # e.g. its database is unreachable: one clear line
        raise SystemExit(f"devpid: {settings.serverdir}: {e}") from None
    if role == "main":
        blobs.clean_temp()
    pool = ThreadPool(minthreads=1, maxthreads=4, name="devpid-worker")
    server = DevpidServer(settings, store, blobs, secret, reactor, pool)
    shared = role == "worker" or settings.workers > 1  # other processes write the store too

    # What handlers use, built now rather than on first use.
    server.page_tokens = track_commits(store)
    server.page_cache = PageCache()
    server.description_cache = DescriptionCache()
    server.stored_paths = stored_paths(store)
    server.public_stages = CommitClearedDict(store, (keys.INDEXES,))
    server.readable_stages = CommitClearedDict(store, (keys.INDEXES,))
    server.replica_nonces = NonceGuard()
    server.replica_feed = PrimaryFeed(server)
    server.web_search = Search(server)
    server.index_get_hooks = (index_get_hook,)
    server.index_post_hooks = (post_json_hook, handle_post)  # JSON push first, then uploads
    server.mirror = Mirror(server)
    status: list[Callable[[], dict[str, Any]]] = [
        server.passwords.status, server.mirror.status, server.replica_feed.status,
        store.writes.status]

    loops = service.MultiService()
    loops.setName("loops")
    node_replica: ReplicaFollower | None = None
    node_cache = node_events = node_gc = None
    mirror_service = MirrorService(server.mirror)
    mirror_service.setServiceParent(loops)
    if getattr(store, "url", None) and role == "main":
        # On PostgreSQL other nodes' commits reach the view; the workers of --workers N
        # read the same view and learn of them as of the main process's own commits.
        from devpid.store.pgfollow import PostgresFollower

        PostgresFollower(store, reactor).setServiceParent(loops)  # type: ignore[arg-type]
    if role == "worker":
        assert main_url is not None
        link: Any = workers.MainLink(server, main_url)  # quacks like a ReplicaFollower
        server.write_proxy = WriteProxy(server, link)
    elif settings.role == "replica" and settings.primary_url:
        node_replica = server.replica = ReplicaFollower(server)
        server.write_proxy = WriteProxy(server, node_replica)
        status.append(node_replica.status)
        node_replica.setServiceParent(loops)
    if role == "main":
        # Once per server directory: the cache index, event hooks and gc (not in workers).
        server.mirror_cache = MirrorCache(server)
        node_cache = MirrorCacheService(server.mirror_cache, settings.serverdir / DB_NAME)
        node_events = server.events = events.build(server)
        node_gc = blobgc.build(server)
        status += [server.mirror_cache.status, node_events.status, node_gc.status]
        for part in (node_cache, node_events, node_gc):
            part.setServiceParent(loops)

    site = make_site(server)
    status += [site.devpid_connections.status, site.devpid_fast.status, site.audit.status]
    root = OrderedServices()
    StoreService(store, reactor).setServiceParent(root)
    LogsService(site).setServiceParent(root)
    pools = service.MultiService()
    ThreadPoolService(pool).setServiceParent(pools)
    ThreadPoolService(server.passwords.pool).setServiceParent(pools)
    pools.setServiceParent(root)
    if shared:
        workers.ExternalCommits(store).setServiceParent(root)
    loops.setServiceParent(root)
    who = f"worker {worker_index}" if role == "worker" else "main process"
    drain = DrainService(reactor, site, server.replica_feed, who)
    drain.setServiceParent(root)
    node = Node(role, server, site, root, mirror=mirror_service, drain=drain,
                mirror_cache=node_cache, replica=node_replica, events=node_events, gc=node_gc)

    if role == "worker":
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        _AdoptedSite(reactor, inherited_fd, family, site).setServiceParent(root)
        count = settings.workers
        status.append(lambda: {"workers": {"count": count, "this": worker_index}})
    elif settings.workers > 1:
        _serve_with_workers(node, reactor, secretfile, portfile, status)
    else:
        endpoint = serverFromString(reactor, listen or (
            # A deep accept queue: a burst of connects waits in the kernel, not in SYN retries.
            f"tcp:{settings.port}:interface={settings.host}:backlog=1024"))
        site_service = StreamServerEndpointService(endpoint, site)
        site_service.setServiceParent(root)
        firstscreen.Announcement(server, site_service).setServiceParent(root)
        if portfile is not None:
            _write_port_when_listening(site_service, portfile, server)
    server.status_providers = status
    return node


def _serve_with_workers(node: Node, reactor: Any, secretfile: Path | None,
                        portfile: Path | None,
                        status: list[Callable[[], dict[str, Any]]]) -> None:
    """Main process of ``--workers N``: the shared socket, a private port for writes, workers."""
    server, site, root = node.server, node.site, node.root
    settings = server.settings
    sock = workers.bind_shared_socket(settings.host, settings.port)
    settings.port = sock.getsockname()[1]
    private = reactor.listenTCP(0, site, interface="127.0.0.1")
    server.trusted_proxies.internal_ports.add(private.getHost().port)
    _ListeningPort(private).setServiceParent(root)
    config = {
        "serverdir": str(settings.serverdir),
        "secretfile": str(secretfile or settings.serverdir / ".secret"),
        "log_format": settings.log_format,
        "main_url": f"http://127.0.0.1:{private.getHost().port}",
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()
                     if k != "serverdir"},
    }
    supervisor = workers.WorkerSupervisor(reactor, sock, settings.workers, config)
    supervisor.setServiceParent(root)
    status.append(supervisor.status)
    _AdoptedSite(reactor, sock.fileno(), sock.family, site).setServiceParent(root)
    firstscreen.Announcement(server).setServiceParent(root)
    node.supervisor, node.shared_socket = supervisor, sock
    if portfile is not None:
        _write_atomically(portfile, str(settings.port))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_port_when_listening(site_service: Any, path: Path, server: DevpidServer) -> None:
    """For tests and supervisors: publish the port actually bound (useful with --port 0)."""
    original = site_service.privilegedStartService

    def start() -> None:
        original()

        def written(port: Any) -> Any:
            number = port.getHost().port
            server.settings.port = number
            _write_atomically(path, str(number))
            return port

        site_service._waitingForPort.addCallback(written)

    site_service.privilegedStartService = start


__all__ = ["SHUTDOWN_GRACE", "Node", "OrderedServices", "Role", "build_node"]
