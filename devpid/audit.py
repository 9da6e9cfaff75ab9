"""The audit log: every write request (who, from where, what, the answer and the serial it
committed) appended to ``audit.sqlite`` in the server directory, and read by ``devpid audit``.

Recorded when the response is finished (DevpidSite.log), so it sees the identity the route
established and the serial it reported; GET and HEAD are reads and not recorded. One small
insert per write, in WAL mode without fsync (the write itself already committed durably);
a failure to record is logged and never fails the request.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.logger import Logger

log = Logger()
FILENAME = "audit.sqlite"
READS = (b"GET", b"HEAD", b"OPTIONS")
_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, who TEXT, address TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, code INTEGER NOT NULL, serial INTEGER)"""


def connect(serverdir: Path, *, create: bool = True) -> sqlite3.Connection:
    path = serverdir / FILENAME
    if create and not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # who did what: not for all
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)
    return conn


class AuditLog:
    """Appends one row per finished write request."""

    def __init__(self, serverdir: Path, trusted: Any) -> None:
        self.conn = connect(serverdir)
        self.trusted = trusted  # devpid.proxies.TrustedProxies: whose X-Real-IP counts

    def record(self, request: Any) -> None:
        if request.method in READS:
            return
        try:
            from devpid.web.app import client_address

            who = getattr(request, "devpid_identity", None)
            serial = request.responseHeaders.getRawHeaders(b"x-devpi-serial")
            self.conn.execute(
                "INSERT INTO audit (time, who, address, method, path, code, serial)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), who if isinstance(who, str) else None,
                 client_address(request, self.trusted),
                 request.method.decode("latin-1")[:16],
                 request.uri.decode("latin-1").split("?", 1)[0][:2000], int(request.code),
                 int(serial[0]) if serial and serial[0].isdigit() else None))
        except Exception:
            log.failure("could not record {uri} in the audit log", uri=request.uri)

    def close(self) -> None:
        """At shutdown, after the last request was recorded (devpid.node's LogsService)."""
        self.conn.close()


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
        sql = "SELECT time, who, address, method, path, code, serial FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    finally:
        conn.close()
    names = ("time", "who", "address", "method", "path", "code", "serial")
    return [dict(zip(names, row, strict=True)) for row in reversed(rows)]
