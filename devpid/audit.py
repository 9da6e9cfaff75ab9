"""The audit log: every write request (who, from where, what, the answer and the serial it
committed) appended to ``audit.sqlite`` in the server directory, and read by ``devpid audit``.

Recorded when the response is finished (DevpidSite.log), so it sees the identity the route
established and the serial it reported; GET and HEAD are reads and not recorded. Rows are
queued in memory and written in batches by one dedicated thread (the reactor never waits on
SQLite's lock, which ``--workers`` processes share); the queue is bounded, rows beyond it are
dropped and counted (``/+status``, ``/+metrics``), and shutdown writes what is queued. A
failure to record is logged, retried with backoff and never fails the request. Only the path
is kept (no query string, no body, no header), so no password or token can land here.

Rows carry their ``origin``: NULL for writes this server saw, else the uuid of the server
that recorded them (a primary, for a replica; the source of an imported dump) and their id
there, unique together, so carrying them again never duplicates one.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger()
FILENAME = "audit.sqlite"
READS = (b"GET", b"HEAD", b"OPTIONS")
MAX_QUEUE = 10_000  # rows waiting for the writer at most; more are dropped and counted
BATCH = 500  # rows per transaction
FLUSH_DELAY = 0.1  # gather a few rows per transaction
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
FIELDS = ("time", "who", "address", "method", "path", "code", "serial", "origin", "origin_id")
_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, who TEXT, address TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, code INTEGER NOT NULL, serial INTEGER)"""
_INSERT = (f"INSERT OR IGNORE INTO audit ({', '.join(FIELDS)})"
           f" VALUES ({', '.join('?' * len(FIELDS))})")
Row = tuple[Any, ...]  # in FIELDS order


def connect(serverdir: Path, *, create: bool = True) -> sqlite3.Connection:
    path = serverdir / FILENAME
    if create and not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # who did what: not for all
    conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    for name, kind in (("origin", "TEXT"), ("origin_id", "INTEGER")):
        if name not in columns:  # an audit.sqlite of an older devpid
            conn.execute(f"ALTER TABLE audit ADD COLUMN {name} {kind}")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS audit_origin ON audit (origin, origin_id)")
    conn.execute("CREATE TABLE IF NOT EXISTS audit_cursor (source TEXT PRIMARY KEY,"
                 " last_id INTEGER NOT NULL)")
    return conn


def append(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert rows (FIELDS order) in one transaction; a known (origin, origin_id) is skipped."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def carried(row: dict[str, Any], source: str) -> Row:
    """A row as another server (``source``) recorded it, for this server's log: it keeps the
    first origin it had, else ``source`` and its id there."""
    origin = row.get("origin") or source
    origin_id = row.get("origin_id") if row.get("origin") else row.get("id")
    return (row["time"], row.get("who"), row.get("address"), row["method"], row["path"],
            row["code"], row.get("serial"), origin, origin_id)


def check_row(row: Any) -> str | None:
    """Why ``row`` (from a dump or a primary) is not an audit row, or None."""
    if not isinstance(row, dict):
        return "not an object"
    types: dict[str, tuple[type, ...]] = {
        "id": (int,), "time": (int, float), "method": (str,), "path": (str,), "code": (int,)}
    for name, allowed in types.items():
        if not isinstance(row.get(name), allowed) or isinstance(row.get(name), bool):
            return f"{name!r} missing or of the wrong type"
    for name in ("who", "address", "origin"):
        if row.get(name) is not None and not isinstance(row[name], str):
            return f"{name!r} must be a string"
    for name in ("serial", "origin_id"):
        if row.get(name) is not None and not isinstance(row[name], int):
            return f"{name!r} must be an integer"
    return None


def rows_after(conn: sqlite3.Connection, after: int, limit: int) -> list[dict[str, Any]]:
    """Rows with an id above ``after``, oldest first, with their id (export, replication)."""
    cur = conn.execute(f"SELECT id, {', '.join(FIELDS)} FROM audit WHERE id > ?"
                       " ORDER BY id LIMIT ?", (after, limit))
    return [dict(zip(("id", *FIELDS), row, strict=True)) for row in cur]


def append_carried(serverdir: Path, source: str, rows: list[dict[str, Any]]) -> int:
    """A batch pulled from ``source`` and the cursor past it, in one transaction (a crash
    in between can neither lose nor repeat a row). Returns the new cursor. Thread."""
    conn = connect(serverdir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, [carried(row, source) for row in rows])
            last = max([row["id"] for row in rows] + [cursor(conn, source)])
            conn.execute("INSERT OR REPLACE INTO audit_cursor (source, last_id) VALUES (?, ?)",
                         (source, last))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return last
    finally:
        conn.close()


def cursor(conn: sqlite3.Connection, source: str) -> int:
    row = conn.execute("SELECT last_id FROM audit_cursor WHERE source = ?", (source,)).fetchone()
    return int(row[0]) if row else 0


def read_cursor(serverdir: Path, source: str) -> int:
    conn = connect(serverdir)
    try:
        return cursor(conn, source)
    finally:
        conn.close()


class AuditLog:
    """Queues one row per finished write request; one thread writes them in batches."""

    def __init__(self, serverdir: Path, trusted: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.conn = connect(serverdir)  # used only by the writer thread from now on
        self.trusted = trusted  # devpid.proxies.TrustedProxies: whose X-Real-IP counts
        self.queue: collections.deque[Row] = collections.deque()
        self.dropped = 0
        self.written = 0
        self.backoff = BACKOFF_START
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="devpid-audit")
        self._writing: Deferred[None] | None = None
        self._timer: Any = None
        self._closed = False
        reactor.addSystemEventTrigger("before", "shutdown", self.close)

    def status(self) -> dict[str, Any]:
        return {"audit-queued": len(self.queue), "audit-dropped": self.dropped}

    def record(self, request: Any) -> None:
        if request.method in READS:
            return
        try:
            from devpid.web.app import client_address

            who = getattr(request, "devpid_identity", None)
            serial = request.responseHeaders.getRawHeaders(b"x-devpi-serial")
            self.add((time.time(), who if isinstance(who, str) else None,
                      client_address(request, self.trusted),
                      request.method.decode("latin-1")[:16],
                      request.uri.decode("latin-1").split("?", 1)[0][:2000], int(request.code),
                      int(serial[0]) if serial and serial[0].isdigit() else None, None, None))
        except Exception:
            log.failure("could not record {uri} in the audit log", uri=request.uri)

    def add(self, row: Row) -> None:
        """Queue a row (FIELDS order); beyond MAX_QUEUE it is dropped and counted."""
        if len(self.queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        self.queue.append(row)
        self._schedule(FLUSH_DELAY)

    def _schedule(self, delay: float) -> None:
        if self._timer is None and self._writing is None and not self._closed:
            self._timer = self.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._writing is not None or not self.queue:
            return
        batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
        if not self.pool.started:
            self.pool.start()
        d = deferToThreadPool(self.reactor, self.pool, append, self.conn, batch)
        self._writing = d
        d.addBoth(self._written, batch)

    def _written(self, result: Any, batch: list[Row]) -> None:
        self._writing = None
        if isinstance(result, Failure):
            log.failure("could not write {n} rows to the audit log; retrying in {delay}s",
                        result, n=len(batch), delay=self.backoff)
            room = MAX_QUEUE - len(self.queue)
            self.dropped += max(0, len(batch) - room)
            self.queue.extendleft(reversed(batch[:room]))
            delay, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)
        else:
            self.written += len(batch)
            self.backoff = BACKOFF_START
            delay = 0.0
        if self.queue:
            self._schedule(delay)

    def close(self) -> Deferred[None]:
        """At shutdown: wait for the batch being written, write the rest, stop the thread."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending: Deferred[Any] = self._writing if self._writing is not None else succeed(None)
        done: Deferred[None] = Deferred()

        def last(_: Any) -> None:
            try:
                while self.queue:
                    batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
                    append(self.conn, batch)  # shutting down: nothing else to serve
                    self.written += len(batch)
            except Exception:
                log.failure("could not write the audit log's last rows at shutdown")
            if self.pool.started:
                self.pool.stop()
            done.callback(None)

        pending.addBoth(last)
        return done


def query(serverdir: Path, *, user: str | None = None, since_serial: int | None = None,
          limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (oldest first), optionally of one user / from a serial."""
    if not (serverdir / FILENAME).exists():
        return []
    conn = connect(serverdir, create=False)
    try:
        where: list[str] = []
        args: list[Any] = []
        if user is not None:
            where.append("who = ?")
            args.append(user)
        if since_serial is not None:
            where.append("serial >= ?")
            args.append(since_serial)
        sql = f"SELECT {', '.join(FIELDS)} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    finally:
        conn.close()
    return [dict(zip(FIELDS, row, strict=True)) for row in reversed(rows)]
