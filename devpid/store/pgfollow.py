"""Keeps a node's local view current with the commits every node makes to PostgreSQL.

A thread of its own LISTENs on the commit channel and, when woken (or every
``poll_interval`` seconds, in case a notification was lost or the connection dropped),
fetches and decodes the entries the view lacks, then has the reactor apply them: the reactor
never waits on the network, and commit listeners (page caches, events, long-polls) run on
the reactor as for local commits. The thread waits for each batch to be applied before
fetching the next, so a long backlog is never held in memory at once.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from twisted.application import service
from twisted.internet import threads
from twisted.logger import Logger

from devpid.store.base import StoreError
from devpid.store.postgres import CHANNEL, Entry, PostgresStore, connect, fetch_entries

log = Logger()

BATCH = 200
STOP_CHECK = 0.1  # seconds between looks at whether the node is stopping


class PostgresFollower(service.Service):
    """LISTEN/NOTIFY (with a periodic poll as fallback) feeding the node's view."""

    def __init__(self, store: PostgresStore, reactor: Any, poll_interval: float = 1.0) -> None:
        self.store = store
        self.reactor = reactor
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="devpid-pg-follower",
                                        daemon=True)
        self._thread.start()

    def stopService(self) -> Any:
        super().stopService()
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         thread.join, self.poll_interval + 5)

    # -- in the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                with connect(self.store.url, self.store.lock_timeout) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    while not self._stopping.is_set():
                        self._pull(conn)
                        self._wait(conn)
                return
            except (psycopg.OperationalError, StoreError) as e:  # unreachable: one line
                if not self._stopping.is_set():
                    log.warn("cannot follow the database ({error}); retrying in {delay}s",
                             error=str(e).strip(), delay=delay)
            except Exception:
                if not self._stopping.is_set():
                    log.failure("following the database failed; retrying in {delay}s",
                                delay=delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        """Until a notification or ``poll_interval``; in short steps, so stopping the node
        does not wait out a whole interval (shutdown is quick, as on SQLite)."""
        waited = 0.0
        while waited < self.poll_interval and not self._stopping.is_set():
            if list(conn.notifies(timeout=STOP_CHECK, stop_after=1)):
                return
            waited += STOP_CHECK

    def _pull(self, conn: psycopg.Connection[Any]) -> None:
        """Hand every entry after the view's serial to the reactor, one batch at a time."""
        while not self._stopping.is_set():
            entries = fetch_entries(conn, self.store.serial, BATCH)
            if not entries:
                return
            before = self.store.serial
            threads.blockingCallFromThread(self.reactor, self._apply, entries)
            if self.store.serial == before:  # not applied (stopping, or a failed apply)
                return

    # -- on the reactor --------------------------------------------------------------------
    def _apply(self, entries: list[Entry]) -> None:
        if not self.running:
            return
        try:
            self.store.apply_entries(entries)
        except Exception:
            log.failure("applying the database's commits to the local view failed")
