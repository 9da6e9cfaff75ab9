"""Replication of the audit log: the primary's ``GET /+audit?after=ID`` (replica auth, like
``/+changelog``) and the replica's puller, which appends the rows with their origin.

The audit log is not part of the changelog (it is no state clients read, and a write's row is
recorded after its serial committed), so it travels on its own, pulled whenever the follower
has caught up (each heartbeat of a held changelog response, the end of a poll): new rows show
up on the replica within a heartbeat. The replica's cursor and the rows it pulled commit in
one transaction, and ``(origin, origin_id)`` is unique, so restarts never duplicate a row.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpid import audit
from devpid.web.app import DevpidServer, app
from devpid.web.errors import JSON_TYPE, HTTPError

log = Logger()
PAGE = 1000  # rows per response (each at most ~2 kB: paths are cut at 2000 characters)
MAX_BODY = PAGE * 4096
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


def _page(server: DevpidServer, after: int) -> bytes:
    """Rows after ``after`` as the JSON answer (a worker thread: SQLite may wait on a lock)."""
    conn = audit.connect(server.settings.serverdir)
    try:
        rows = audit.rows_after(conn, after, PAGE)
    finally:
        conn.close()
    return json.dumps({"uuid": server.store.uuid, "rows": rows}).encode() + b"\n"


@app.route("/+audit", methods=["GET"])
async def audit_rows(server: DevpidServer, request: Any) -> bytes:
    from devpid.replica import check_auth

    check_auth(server, request, "/+audit")
    raw = request.args.get(b"after", [b"0"])[0]
    try:
        after = int(raw)
    except ValueError:
        raise HTTPError(400, "after must be an integer audit row id") from None
    if after < 0:
        raise HTTPError(400, "after must not be negative")
    body: bytes = await server.in_thread(_page, server, after)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return body


class AuditPuller:
    """Pulls the primary's audit rows into this replica's log; one pull at a time, a wake
    during a pull runs another after it, a failed pull is logged and retried with backoff."""

    def __init__(self, follower: Any) -> None:
        self.follower = follower
        self.server: DevpidServer = follower.server
        self.clock = follower.clock
        self.backoff = BACKOFF_START
        self.pulled = 0
        self.last_error: str | None = None
        self.running = False
        self.stopped = False
        self._again = False
        self._retry: Any = None
        self._current: Deferred[None] | None = None

    def wake(self) -> None:
        if self.stopped or self.follower.primary_uuid is None:
            return
        if self.running:
            self._again = True
            return
        if self._retry is not None and self._retry.active():
            return  # backing off after a failure
        self._retry = None
        self.running = True
        self._current = defer.ensureDeferred(self._pull())
        self._current.addBoth(self._done)

    def stop(self) -> None:
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._current is not None:
            self._current.cancel()

    async def _pull(self) -> None:
        from devpid.replica import ReplicationError, _message, _read_small

        follower = self.follower
        serverdir = self.server.settings.serverdir
        while not self.stopped:
            source = follower.primary_uuid
            after = await self.server.in_thread(audit.read_cursor, serverdir, source)
            args = {b"after": [str(after).encode()]}
            response = await follower.http.get(
                f"{follower.primary_url}/+audit?after={after}",
                headers=follower._auth("/+audit", args),
                unbuffered=True,
                timeout=self.server.settings.request_timeout,
            )
            body = await _read_small(response, self.clock, MAX_BODY)
            if response.code != 200:
                raise ReplicationError(f"audit rows: primary answered {response.code}: "
                                       f"{_message(body)}")
            try:
                doc = json.loads(body)
                uuid, rows = doc["uuid"], doc["rows"]
            except (ValueError, KeyError, TypeError):
                raise ReplicationError(f"audit rows: garbage from the primary: {body[:80]!r}"
                                       ) from None
            if uuid != source or not isinstance(rows, list):
                raise ReplicationError(f"audit rows: from {uuid!r}, not {source!r}")
            for row in rows:
                error = audit.check_row(row)
                if error:
                    raise ReplicationError(f"audit rows: a malformed row ({error})")
            if not rows:
                return
            await self.server.in_thread(audit.append_carried, serverdir, source, rows)
            self.pulled += len(rows)
            if len(rows) < PAGE:
                return

    def _done(self, result: Any) -> None:
        self.running = False
        self._current = None
        if self.stopped:
            return
        if isinstance(result, Failure):
            from devpid.replica import _ORDINARY, _describe

            if result.check(*_ORDINARY):
                log.warn("pulling audit rows failed: {error}; retrying in {delay:.1f}s",
                         error=_describe(result.value), delay=self.backoff)
            else:
                log.failure("pulling audit rows failed; retrying in {delay:.1f}s", result,
                            delay=self.backoff)
            self.last_error = f"{result.type.__name__}: {result.value}"
            self._retry = self.clock.callLater(self.backoff, self.wake)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return
        self.backoff = BACKOFF_START
        self.last_error = None
        if self._again:
            self._again = False
            self.wake()
