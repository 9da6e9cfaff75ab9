"""Several reactor processes sharing one listening socket (``--workers N``).

The main process binds the public socket, serves on it itself and starts N-1 worker
processes that accept on the same socket, so reads use every core. There is still exactly one
writer for user changes: a worker forwards every write (uploads, index and user changes,
logins) to the main process over a private loopback port and answers once its own view of the
database has the serial the write produced. Workers learn about commits of the other
processes from SQLite itself (``PRAGMA data_version``), so page caches stay exact. Mirror page
and file records may be written by any process: they are idempotent copies of upstream data.

On PostgreSQL (``--store``) the processes share the node's local view of the database: the
main process follows the database and applies every node's commits to the view, and the
workers read it and learn of them the same way. A worker's own mirror records go to the
database through its write thread (devpid/store/postgres.py), like any node's commits.

A worker exits when the main process goes away (its stdin closes); the main process restarts
a worker that dies, with backoff.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from devpid.store.base import Store

log = Logger()
POLL_INTERVAL = 0.05


def bind_shared_socket(host: str, port: int) -> socket.socket:
    """The public listening socket every process accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    os.set_inheritable(sock.fileno(), True)
    return sock


class ExternalCommits(service.Service):
    """Polls SQLite for other processes' commits (feeds page caches, long-polls, waiters)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.loop = LoopingCall(self._poll)

    def _poll(self) -> None:
        try:
            self.store.poll_external()
        except Exception:
            log.failure("polling for commits of other processes failed")

    def startService(self) -> None:
        super().startService()
        self.loop.start(POLL_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()


class MainLink:
    """What the replica write proxy needs, pointing at the main process instead."""

    def __init__(self, server: Any, main_url: str) -> None:
        import treq

        self.server = server
        self.primary_url = main_url.rstrip("/")
        self.http = treq

    async def wait_for_serial_async(self, serial: int, timeout: float) -> bool:
        clock = self.server.reactor
        deadline = clock.seconds() + timeout
        store = self.server.store
        while True:
            store.poll_external()
            if store.serial >= serial:
                return True
            if clock.seconds() > deadline:
                return False
            d: defer.Deferred[None] = defer.Deferred()
            clock.callLater(0.005, d.callback, None)
            await d

    def wait_for_serial(self, serial: int, timeout: float) -> defer.Deferred[bool]:
        return defer.ensureDeferred(self.wait_for_serial_async(serial, timeout))


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts N-1 workers on the shared socket and keeps them running."""

    def __init__(self, reactor: Any, sock: socket.socket, count: int, config: dict[str, Any],
                 logdir: Path | None = None) -> None:
        self.reactor = reactor
        self.sock = sock
        self.count = count
        self.config = config
        self.workers: dict[int, _WorkerProcess] = {}
        self.transports: dict[int, Any] = {}
        self.restarts = 0
        self.delay: dict[int, float] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        proto = _WorkerProcess(self, index)
        args = [sys.executable, "-m", "devpid.workers", json.dumps({**self.config,
                                                                     "index": index})]
        transport = self.reactor.spawnProcess(
            proto, sys.executable, args, env=os.environ.copy(),
            childFDs={0: "w", 1: 1, 2: 2, 3: self.sock.fileno()},
        )
        self.workers[index] = proto
        self.transports[index] = transport
        log.info("started worker {index} (pid {pid})", index=index, pid=transport.pid)

    def ended(self, proto: _WorkerProcess, reason: Any) -> None:
        self.workers.pop(proto.index, None)
        self.transports.pop(proto.index, None)
        if not self.running:
            return
        delay = min(self.delay.get(proto.index, 0.5) * 2, 30.0)
        self.delay[proto.index] = delay
        self.restarts += 1
        log.warn("worker {index} exited ({reason}); restarting in {delay}s",
                 index=proto.index, reason=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self._spawn, proto.index)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        waits = []
        for index, transport in list(self.transports.items()):
            waits.append(self.workers[index].ended)
            with contextlib.suppress(Exception):  # already gone
                transport.signalProcess("TERM")
        return defer.DeferredList(waits)

    def status(self) -> dict[str, Any]:
        return {"workers": {"count": self.count, "running": 1 + len(self.workers),
                            "restarts": self.restarts}}


class _ParentWatch(protocol.Protocol):
    """Stops the worker's reactor when the main process closes our stdin (it is gone)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def worker_main(config: dict[str, Any]) -> None:
    """A worker process: the read path of the server on the inherited socket (fd 3)."""
    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner, jsonFileLogObserver, textFileLogObserver

    from devpid import auth
    from devpid.node import build_node
    from devpid.web import Settings

    observer = (jsonFileLogObserver(sys.stdout) if config["log_format"] == "json"
                else textFileLogObserver(sys.stdout))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    serverdir = Path(config["serverdir"])
    settings = Settings(serverdir=serverdir, **config["settings"])
    secret = auth.load_or_create_secret(Path(config["secretfile"]))
    node = build_node(settings, "worker", secret=secret, reactor=reactor,
                      main_url=config["main_url"], worker_index=config["index"])
    reactor.callWhenRunning(node.root.startService)
    # Stopping drains this worker's requests, then closes its store (devpid/node.py).
    reactor.addSystemEventTrigger("before", "shutdown", node.root.stopService)
    stdio.StandardIO(  # type: ignore[call-arg]
        _ParentWatch(reactor), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY)
    )
    log.info("worker {index} serving", index=config["index"])
    reactor.run()


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]))
