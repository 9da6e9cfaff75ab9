"""Replication: the primary's changelog feed, the replica's follower, and the write proxy.

Wire format and guarantees are documented in ``docs/replication.rst``; in short:

* ``GET /+changelog?since=N`` (replica auth) streams ``{"serial", "changes"}`` JSON lines from
  serial N on, holds the response open for new commits (blank heartbeat lines every few
  seconds) and ends it after ~30 s or a large catch-up batch; the replica then re-polls.
* ``GET /+blob/{sha256}`` (replica auth) serves one content-addressed blob.
* A replica applies a serial only after every blob it references is stored locally, so it
  never lists a file it cannot serve; writes it receives are proxied to the primary and answered
  once the replica has applied the serial the write produced.

Replica authentication: ``Authorization: DevpidReplica <uuid>:<unix-time>:<nonce>:<hex hmac>``
where the HMAC-SHA256 (key derived from the shared secret) covers uuid, time, nonce, method,
path and query string; accepted within +-60 s of the primary's clock and only once (the nonce
is remembered for the window), so a captured header can neither fetch anything else nor be
replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, DeferredQueue
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server as twserver
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.static import File, NoRangeStaticProducer
from zope.interface import implementer

from devpid.audit_feed import AuditPuller
from devpid.domain import keys
from devpid.store.base import ChangelogReader, Changes
from devpid.store.blobs import HEX64
from devpid.store.sqlite import encode_value
from devpid.web.app import DevpidServer, app, client_address, header
from devpid.web.errors import JSON_TYPE, HTTPError, forbidden, not_found, status_reason

log = Logger()

AUTH_SCHEME = "DevpidReplica"
CHANGELOG_TYPE = b"application/x-devpid-changelog"
CLOCK_SKEW = 60  # seconds a replica request's timestamp may differ from the primary's clock
HOLD_SECONDS = 30.0  # how long the primary keeps a caught-up changelog response open
HEARTBEAT_SECONDS = 5.0  # blank line written while holding, so replicas detect dead peers
IDLE_TIMEOUT = 3 * HEARTBEAT_SECONDS  # replica aborts a stream silent for this long
MAX_ENTRIES = 1000  # entries per response; a replica further behind re-polls at once
BATCH = 16  # entries read from the database and written at once
# Entries up to INLINE_MAX bytes travel inline as one line; larger ones (any size the store
# holds) as a reference line the replica follows with GET /+changelog/N, spooled to disk.
INLINE_MAX = 1024 * 1024
MAX_LINE = INLINE_MAX + 1024  # so a misbehaving primary cannot make a replica buffer more
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WRITE_METHODS = frozenset({b"PUT", b"POST", b"PATCH", b"DELETE", b"PUSH"})
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
    }
)
# Headers the replica answers with itself rather than copying from the primary's response.
OWN_RESPONSE_HEADERS = HOP_BY_HOP | {
    b"x-devpi-uuid", b"x-devpi-primary-uuid", b"x-devpi-master-uuid", b"server", b"date",
}
_UUID = re.compile(r"[A-Za-z0-9-]{1,64}")
_NONCE = re.compile(r"[0-9a-f]{16,64}")
MAX_NONCES = 100_000  # nonces remembered at most (only correctly signed requests add one)


# -- authentication -------------------------------------------------------------------------
def _replica_key(secret: bytes) -> bytes:
    """A key used only for replication, so it can never be confused with login tokens."""
    return hashlib.sha256(b"devpid-replica\0" + secret).digest()


def canonical_query(args: dict[bytes, list[bytes]]) -> str:
    """The query string as signed: its parameters sorted and re-encoded, so a proxy that
    re-encodes or reorders it changes nothing, while any other parameter or value does."""
    return urlencode(sorted((k, v) for k, values in args.items() for v in values))


def sign(secret: bytes, replica_uuid: str, timestamp: int, nonce: str, method: str,
         path: str, query: str) -> str:
    """The hex HMAC a replica sends for one request: ``path`` is the endpoint path (e.g.
    ``/+changelog``, without any prefix of the primary's URL), ``query`` its canonical query."""
    data = "\n".join(("devpid-replica-v2", replica_uuid, str(timestamp), nonce, method, path,
                      query)).encode()
    return hmac.new(_replica_key(secret), data, hashlib.sha256).hexdigest()


def auth_header(secret: bytes, replica_uuid: str, timestamp: int, method: str, path: str,
                args: dict[bytes, list[bytes]] | None = None) -> str:
    """A fresh ``Authorization`` value (new nonce) for one request."""
    nonce = os.urandom(16).hex()
    signature = sign(secret, replica_uuid, timestamp, nonce, method, path,
                     canonical_query(args or {}))
    return f"{AUTH_SCHEME} {replica_uuid}:{timestamp}:{nonce}:{signature}"


class NonceGuard:
    """Nonces of accepted replica requests, each kept until its timestamp is out of the
    window (after that the timestamp alone refuses it). Per process: with ``--workers N``
    a replay within the window could be taken once by each process (same request only)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}  # nonce -> time it may be forgotten (in order)

    def first_use(self, nonce: str, now: float) -> bool:
        seen = self.seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now and len(seen) < MAX_NONCES:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        seen[nonce] = now + 2 * CLOCK_SKEW + 1
        return True


def check_auth(server: DevpidServer, request: Any, path: str) -> str:
    """The authenticated replica uuid; anything else is answered 403 (not 401: no login)."""
    value = header(request, b"authorization") or ""
    scheme, _, credentials = value.partition(" ")
    if scheme != AUTH_SCHEME:
        raise forbidden("replication requires replica authentication")
    parts = credentials.strip().split(":")
    if (len(parts) != 4 or not _UUID.fullmatch(parts[0]) or not parts[1].isdigit()
            or not _NONCE.fullmatch(parts[2])):
        raise forbidden("malformed replica credentials (do primary and replica run the same "
                        "devpid version?)")
    replica_uuid, stamp, nonce, signature = parts
    now = server.reactor.seconds()
    if abs(int(stamp) - now) > CLOCK_SKEW:
        raise forbidden("replica credentials expired (check the clocks of primary and replica)")
    method = request.method.decode("ascii", "replace")
    expected = sign(server.secret, replica_uuid, int(stamp), nonce, method, path,
                    canonical_query(request.args or {}))
    if not hmac.compare_digest(signature, expected):
        raise forbidden("invalid replica credentials (do primary and replica share the secret?)")
    if not server.replica_nonces.first_use(nonce, now):
        raise forbidden("replica credentials already used (a replayed request)")
    return replica_uuid


# -- primary side: the changelog feed ---------------------------------------------------------
class PrimaryFeed:
    """Streams the changelog to replicas and remembers who polled (for ``/+status``)."""

    def __init__(self, server: DevpidServer) -> None:
        self.server = server
        self.streams: set[_FeedStream] = set()
        self.replicas: dict[str, dict[str, Any]] = {}
        server.store.add_commit_listener(self._committed)

    def _committed(self, serial: int, changes: Changes) -> None:
        for stream in list(self.streams):
            stream.wake()

    def end_streams(self) -> None:
        """Answer every held-open changelog response now: on shutdown a replica must not
        hold the drain for HOLD_SECONDS (it polls again, with backoff, until we are back)."""
        for stream in list(self.streams):
            stream.end()

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "polling-replicas": {
                uuid: {**info, "seconds-ago": round(now - info["last-request"], 1)}
                for uuid, info in self.replicas.items()
            }
        }

    def open_stream(self, request: Any, replica_uuid: str, since: int) -> Deferred[bytes]:
        addr = request.getClientAddress()
        self.replicas[replica_uuid] = {
            "remote-ip": getattr(addr, "host", "-"),
            "since": since,
            "last-request": time.time(),
            "outside-url": header(request, b"x-devpid-replica-url"),
        }
        stream = _FeedStream(self, request, since)
        self.streams.add(stream)
        stream.start()
        return stream.done


@implementer(IPushProducer)
class _FeedStream:
    """One held-open changelog response; a push producer, so a slow replica pauses the
    feed instead of having entries pile up in the transport's buffer."""

    def __init__(self, feed: PrimaryFeed, request: Any, since: int) -> None:
        self.feed = feed
        self.request = request
        self.next = since
        self.sent = 0
        self.finished = False
        self.clock = feed.server.reactor
        self.done: Deferred[bytes] = Deferred(lambda _d: self._cleanup())
        self._pending_wake: Any = None
        self._timers: list[Any] = []
        self.paused = False
        self._registered = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.pump()

    def stopProducing(self) -> None:
        self._cleanup()

    def start(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CHANGELOG_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Devpid-Serial", str(self.feed.server.store.serial).encode())
        self._timers.append(self.clock.callLater(HOLD_SECONDS, self.end))
        self._timers.append(self.clock.callLater(HEARTBEAT_SECONDS, self._heartbeat))
        request.registerProducer(self, True)
        self._registered = True
        self.pump()
        if self.sent == 0 and not self.finished:
            # A caught-up replica gets the headers now (a heartbeat line sends them), so
            # its request timeout measures the answer, not the wait for the next commit.
            self.request.write(b"\n")

    def wake(self) -> None:
        if self._pending_wake is None and not self.finished:
            self._pending_wake = self.clock.callLater(0, self._woken)

    def _woken(self) -> None:
        self._pending_wake = None
        self.pump()

    def pump(self) -> None:
        """Write every committed serial from ``next`` on (bounded per response)."""
        if self.finished:
            return
        try:
            store = self.feed.server.store
            while not self.paused and self.next <= store.serial:
                # At most BATCH entries (of up to INLINE_MAX each) in memory at a time.
                rows = store.changelog_rows_since(
                    self.next, min(BATCH, MAX_ENTRIES - self.sent), INLINE_MAX)
                if not rows:
                    break
                self.request.write(b"".join(entry_line(*row) for row in rows))
                self.next = rows[-1][0] + 1
                self.sent += len(rows)
                if self.sent >= MAX_ENTRIES:
                    self.end()
                    return
        except Exception:
            log.failure("changelog feed failed; ending the response")
            self.end()

    def _heartbeat(self) -> None:
        if self.finished:
            return
        try:
            self.request.write(b"\n")
        except Exception:
            log.failure("changelog heartbeat failed")
            self.end()
            return
        self._timers.append(self.clock.callLater(HEARTBEAT_SECONDS, self._heartbeat))

    def end(self) -> None:
        if self.finished:
            return
        self._cleanup()
        self.done.callback(b"")

    def _cleanup(self) -> None:
        self.finished = True
        self.feed.streams.discard(self)
        if self._registered:
            self._registered = False
            with contextlib.suppress(Exception):  # the connection may be gone already
                self.request.unregisterProducer()
        for timer in [*self._timers, self._pending_wake]:
            if timer is not None and timer.active():
                timer.cancel()
        self._timers.clear()
        self._pending_wake = None


def entry_line(serial: int, size: int, text: str | None) -> bytes:
    """One changelog line: the stored JSON text as is (no re-encoding on the reactor), or,
    for an entry larger than INLINE_MAX, a reference the replica fetches as a stream."""
    if text is None:
        return b'{"serial":%d,"size":%d}\n' % (serial, size)
    return b'{"serial":%d,"changes":%s}\n' % (serial, text.encode("ascii"))


class _EntryResource(Resource):
    """``GET /+changelog/N``: one entry's JSON text, streamed from the database in chunks."""

    isLeaf = True

    def __init__(self, reader: ChangelogReader) -> None:
        super().__init__()
        self.reader = reader

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(self.reader.size).encode())
        NoRangeStaticProducer(request, self.reader).start()
        return twserver.NOT_DONE_YET


@app.route("/+changelog", methods=["GET"])
def changelog_feed(server: DevpidServer, request: Any) -> Deferred[bytes]:
    replica_uuid = check_auth(server, request, "/+changelog")
    raw = request.args.get(b"since", [b"0"])[0]
    try:
        since = int(raw)
    except ValueError:
        raise HTTPError(400, "since must be an integer serial") from None
    if since < 0:
        raise HTTPError(400, "since must not be negative")
    return server.replica_feed.open_stream(request, replica_uuid, since)


@app.route("/+changelog/<int:serial>", methods=["GET"])
def changelog_entry(server: DevpidServer, request: Any, serial: int) -> Any:
    check_auth(server, request, f"/+changelog/{serial}")
    reader = server.store.open_changelog(serial)
    if reader is None:
        raise not_found(f"serial {serial} is not in the changelog")
    return _EntryResource(reader)


@app.route("/+blob/<sha256>", methods=["GET"])
def get_blob(server: DevpidServer, request: Any, sha256: str) -> Any:
    check_auth(server, request, f"/+blob/{sha256}")
    if not HEX64.fullmatch(sha256):
        raise not_found("not a sha256 digest")
    path = server.blobs.path(sha256)
    if path.is_file():
        return File(str(path), defaultType="application/octet-stream")
    if _referenced(server, sha256):
        raise not_found(f"blob {sha256} is referenced but missing on the primary")
    raise HTTPError(410, f"blob {sha256} is no longer referenced on the primary")


def _referenced(server: DevpidServer, sha256: str) -> bool:
    """Whether any current file/doc record needs the blob (a scan: only after a miss)."""
    return any(
        sha256 in keys.record_blobs(key, value)
        for kind in keys.RECORD_KINDS
        for key, value in server.store.iter_items(kind + "/")
    )


# -- replica side ---------------------------------------------------------------------------
class ReplicationError(Exception):
    """The primary said or sent something the replica cannot apply (retried with backoff)."""


class PrimaryMismatch(ReplicationError):
    """The URL now answers with another server's uuid: refuse to apply anything from it."""


class _End:
    """Queued when a changelog response ends (``reason`` is None for a clean end)."""

    def __init__(self, reason: Failure | None) -> None:
        self.reason = reason


class _BodyReader(Protocol):
    """Feeds a response body to ``on_data``; aborts it after ``idle`` seconds of silence."""

    def __init__(self, clock: Any, idle: float, on_data: Callable[[bytes], None]) -> None:
        self.clock = clock
        self.idle = idle
        self.on_data = on_data
        self.done: Deferred[None] = Deferred()
        self.finished = False
        self.error: BaseException | None = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(self.idle, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle)
        try:
            self.on_data(data)
        except Exception as e:
            self.error = e
            self.abort()

    def _timed_out(self) -> None:
        self.error = ReplicationError(f"no data from the primary for {self.idle:.0f}s")
        self.abort()

    def abort(self) -> None:
        if not self.finished and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.finished:
            return
        self.finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.error is not None:
            self.done.errback(self.error)
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


# Failures that are part of a primary being down or restarting (retried, logged as one line);
# anything else is a bug or a broken disk and keeps its traceback.
_ORDINARY = (
    ReplicationError,
    ierror.ConnectError,
    ierror.ConnectionLost,
    ierror.ConnectionDone,
    ierror.TimeoutError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


def _describe(e: BaseException) -> str:
    """One line for an ordinary failure (twisted.web wraps the real cause in ``reasons``)."""
    reasons = getattr(e, "reasons", None)
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(
            _describe(r.value) if isinstance(r, Failure) and r.value is not None else str(r)
            for r in reasons
        )
        return f"{type(e).__name__}: {inner}"
    text = str(e).strip().replace("\n", " ")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ReplicaFollower(service.Service):
    """Follows the primary's changelog forever: applies serials, fetches blobs, backs off."""

    def __init__(self, server: DevpidServer, http: Any = None) -> None:
        self.server = server
        self.store = server.store
        self.clock = server.reactor
        assert server.settings.primary_url
        self.primary_url = server.settings.primary_url.rstrip("/")
        self.uuid_file: Path = server.settings.serverdir / ".primary-uuid"
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(self.clock, persistent=True)
            self._pool.maxPersistentPerHost = 4
            http = HTTPClient(Agent(self.clock, pool=self._pool))
        self.http = http
        self.primary_uuid: str | None = self._load_primary_uuid()
        if self.primary_uuid:
            server.primary_uuid = self.primary_uuid
        self.primary_serial: int | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.last_contact: float | None = None
        self.refused: str | None = None
        self.polls = 0
        self.backoff = BACKOFF_START
        self._loop: Deferred[None] | None = None
        self._running = False
        self._waiters: list[tuple[int, Deferred[bool]]] = []
        self.store.add_commit_listener(self._committed)
        self.audit = AuditPuller(self)  # the primary's audit rows (devpid/audit_feed.py)

    # -- service ------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._running = True
        self._loop = defer.ensureDeferred(self._run())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._running = False
        self.audit.stop()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return defer.succeed(None)

    # -- status and waiting ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        serial = self.store.serial
        lag = None if self.primary_serial is None else max(0, self.primary_serial - serial)
        return {
            "role": "REPLICA",
            "primary-url": self.primary_url,
            "primary-uuid": self.primary_uuid,
            "replica": {
                "primary-url": self.primary_url,
                "primary-uuid": self.primary_uuid,
                "serial": serial,
                "primary-serial": self.primary_serial,
                "lag": lag,
                "in-sync": lag == 0 and self.refused is None,
                "last-contact": self.last_contact,
                "last-error": self.last_error,
                "last-error-time": self.last_error_time,
                "refused": self.refused,
                "polls": self.polls,
                "audit-rows-pulled": self.audit.pulled,
                "audit-last-error": self.audit.last_error,
            },
        }

    def wait_for_serial(self, serial: int, timeout: float) -> Deferred[bool]:
        """Fires True once the local store reached ``serial``, False after ``timeout``."""
        if self.store.serial >= serial:
            return defer.succeed(True)
        d: Deferred[bool] = Deferred()
        entry = (serial, d)
        self._waiters.append(entry)

        def expire() -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(False)

        timer = self.clock.callLater(timeout, expire)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _committed(self, serial: int, changes: Changes) -> None:
        ready = [w for w in self._waiters if w[0] <= serial]
        for entry in ready:
            self._waiters.remove(entry)
            entry[1].callback(True)

    # -- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        """Poll forever; every error is logged, backed off (exponential, capped) and retried."""
        while self._running:
            started = self.clock.seconds()
            applied = self.store.serial
            try:
                await self.poll_once()
                self.backoff = BACKOFF_START
                self.last_error = None
                if self.store.serial == applied and self.clock.seconds() - started < 0.5:
                    await self._sleep(0.5)  # a primary ending polls at once must not spin us
            except CancelledError:
                if not self._running:
                    return
                self._failed("request cancelled (timeout)")
            except PrimaryMismatch as e:
                if not self._running:
                    return
                log.error("replication refused: {error}", error=str(e))
                self._failed(str(e))
                self.backoff = BACKOFF_MAX
            except Exception as e:
                if not self._running:
                    return  # the stream was cut by our own shutdown
                if isinstance(e, _ORDINARY):
                    # The primary is down, restarting or unreachable: expected, one line.
                    log.warn("replication from {url} failed: {error}; retrying in {delay:.1f}s",
                             url=self.primary_url, error=_describe(e), delay=self.backoff)
                else:
                    log.failure("replication from {url} failed; retrying in {delay:.1f}s",
                                url=self.primary_url, delay=self.backoff)
                self._failed(f"{type(e).__name__}: {e}")
            if not self._running:
                return
            if self.last_error is not None:
                try:
                    await self._sleep(self.backoff)
                except CancelledError:
                    return
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _failed(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = time.time()

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: timer.cancel())
        timer = self.clock.callLater(seconds, d.callback, None)
        return d

    def _auth(self, path: str, args: dict[bytes, list[bytes]] | None = None
              ) -> dict[bytes, list[bytes]]:
        value = auth_header(self.server.secret, self.store.uuid, int(self.clock.seconds()),
                            "GET", path, args)
        out = {b"Authorization": [value.encode()]}
        if self.server.settings.outside_url:
            out[b"X-Devpid-Replica-Url"] = [self.server.settings.outside_url.encode()]
        return out

    async def poll_once(self) -> None:
        """One changelog request: apply everything it streams until the primary ends it."""
        self.polls += 1
        since = self.store.serial + 1
        response = await self.http.get(
            f"{self.primary_url}/+changelog?since={since}",
            headers=self._auth("/+changelog", {b"since": [str(since).encode()]}),
            unbuffered=True,
            timeout=self.server.settings.request_timeout,
        )
        if response.code != 200:
            body = await _read_small(response, self.clock)
            raise ReplicationError(f"primary answered {response.code}: {_message(body)}")
        self._check_primary(response)
        queue: DeferredQueue[bytes | _End] = DeferredQueue()
        buffer = bytearray()

        def on_data(data: bytes) -> None:
            buffer.extend(data)
            if b"\n" not in data:
                if len(buffer) > MAX_LINE:
                    raise ReplicationError("changelog line too long")
                return
            *lines, rest = bytes(buffer).split(b"\n")
            buffer[:] = rest
            for line in lines:
                if line.strip():
                    queue.put(line)
                else:
                    self._healthy()  # a heartbeat: the primary is alive and we are caught up
                    self.audit.wake()

        reader = _BodyReader(self.clock, IDLE_TIMEOUT, on_data)
        reader.done.addBoth(lambda r: queue.put(_End(r if isinstance(r, Failure) else None)))
        response.deliverBody(reader)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.reason is not None:
                        item.reason.raiseException()
                    if buffer.strip():
                        raise ReplicationError("changelog ended in the middle of a line")
                    self.audit.wake()
                    return
                await self._apply_line(item)
        finally:
            reader.abort()

    def _check_primary(self, response: Any) -> None:
        self.last_contact = time.time()
        uuid = _resp_header(response, b"x-devpi-uuid")
        if not uuid:
            raise ReplicationError("primary sent no X-Devpi-Uuid header")
        if uuid == self.store.uuid:  # --store names the primary's own PostgreSQL database
            self.refused = (f"{self.primary_url} keeps its data in this replica's own store "
                            "(the same uuid); give the replica a database of its own")
            raise PrimaryMismatch(self.refused)
        if self.primary_uuid is None:
            self._store_primary_uuid(uuid)
        elif uuid != self.primary_uuid:
            self.refused = (
                f"{self.primary_url} now has uuid {uuid}, but this replica follows "
                f"{self.primary_uuid}; not applying anything from it (to follow the new "
                f"primary, start a fresh replica)"
            )
            raise PrimaryMismatch(self.refused)
        self.refused = None
        try:
            primary_serial = int(_resp_header(response, b"x-devpid-serial") or "")
        except ValueError:
            raise ReplicationError("primary sent no valid X-Devpid-Serial header") from None
        if primary_serial < self.store.serial:
            raise ReplicationError(
                f"primary is at serial {primary_serial}, behind this replica "
                f"({self.store.serial}); was it restored from an old backup?"
            )
        self.primary_serial = primary_serial

    async def _apply_line(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            serial = entry["serial"]
            changes = entry["changes"] if "size" not in entry else None
        except (ValueError, KeyError, TypeError):
            raise ReplicationError(f"garbage in the changelog: {line[:80]!r}") from None
        if not isinstance(serial, int) or not isinstance(changes, dict | None):
            raise ReplicationError(f"malformed changelog entry: {line[:80]!r}")
        current = self.store.serial
        if serial <= current:
            return  # already applied (e.g. a repeated entry after a reconnect)
        if serial != current + 1:
            raise ReplicationError(f"gap in the changelog: got {serial}, expected {current + 1}")
        encoded: dict[str, str] | None = None
        if changes is None:  # a large entry: streamed on its own request
            changes, encoded = await self.fetch_entry(serial)
        for sha256 in blobs_of(changes):
            await self.fetch_blob(sha256)
        if self.store.serial != current:  # cannot happen (one loop), but never double-apply
            return
        await self.store.apply_serial_async(serial, changes, encoded)
        if self.primary_serial is None or serial > self.primary_serial:
            self.primary_serial = serial
        self._healthy()
        if serial >= self.primary_serial:
            self.audit.wake()  # caught up; the write's row follows its serial (a heartbeat)

    def _healthy(self) -> None:
        """Proof of a working stream (an applied serial, a heartbeat): clear error state."""
        self.last_contact = time.time()
        self.last_error = None
        self.backoff = BACKOFF_START

    async def fetch_entry(self, serial: int) -> tuple[Changes, dict[str, str]]:
        """A large changelog entry: spooled to a temp file, parsed and its values encoded
        for the store in a worker thread (so applying it only writes on the reactor)."""
        blobs = self.server.blobs
        path = f"/+changelog/{serial}"
        response = await self.http.get(
            self.primary_url + path,
            headers=self._auth(path),
            unbuffered=True,
            timeout=self.server.settings.request_timeout,
        )
        if response.code != 200:
            body = await _read_small(response, self.clock)
            raise ReplicationError(
                f"fetching serial {serial}: primary answered {response.code}: {_message(body)}"
            )
        tmp = await self._spool(response)
        try:
            changes, encoded = await self.server.in_thread(_load_entry, tmp)
        finally:
            blobs.discard(tmp)
        if not isinstance(changes, dict):
            raise ReplicationError(f"serial {serial} arrived malformed (not a JSON object)")
        return changes, encoded

    async def fetch_blob(self, sha256: str) -> None:
        """Copy one blob from the primary, verifying its hash before it gets its name."""
        blobs = self.server.blobs
        if blobs.reuse(sha256):  # refreshed, so a gc sweep cannot take it before the apply
            return
        path = f"/+blob/{sha256}"
        response = await self.http.get(
            self.primary_url + path,
            headers=self._auth(path),
            unbuffered=True,
            timeout=self.server.settings.request_timeout,
        )
        if response.code == 410:
            log.warn("blob {sha256} is gone on the primary (file since deleted); skipping",
                     sha256=sha256)
            await _read_small(response, self.clock)
            return
        if response.code != 200:
            body = await _read_small(response, self.clock)
            raise ReplicationError(
                f"fetching blob {sha256}: primary answered {response.code}: {_message(body)}"
            )
        digest = hashlib.sha256()
        tmp = await self._spool(response, digest.update)
        try:
            if digest.hexdigest() != sha256:
                raise ReplicationError(f"blob {sha256} arrived with a different hash")
            await self.server.in_thread(blobs.commit_temp, tmp, sha256)
        except BaseException:
            blobs.discard(tmp)
            raise

    async def _spool(self, response: Any, also: Callable[[bytes], Any] | None = None) -> Any:
        """``response``'s body in a new, closed temp file (each chunk also given to ``also``),
        read with the idle timeout; the caller owns (and discards) the file."""
        blobs = self.server.blobs
        f, tmp = blobs.new_temp()
        try:
            def on_data(data: bytes) -> None:
                if also is not None:
                    also(data)
                f.write(data)

            reader = _BodyReader(self.clock, IDLE_TIMEOUT, on_data)
            response.deliverBody(reader)
            try:
                await reader.done
            finally:
                reader.abort()
        except BaseException:
            f.close()
            blobs.discard(tmp)
            raise
        f.close()
        return tmp

    # -- the primary's identity ----------------------------------------------------------
    def _load_primary_uuid(self) -> str | None:
        try:
            return self.uuid_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _store_primary_uuid(self, uuid: str) -> None:
        tmp = self.uuid_file.with_name(self.uuid_file.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(uuid + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.uuid_file)
        self.primary_uuid = uuid
        self.server.primary_uuid = uuid
        log.info("replicating primary {uuid} at {url}", uuid=uuid, url=self.primary_url)


def _load_entry(path: Path) -> tuple[Any, dict[str, str]]:
    """Parse a spooled changelog entry and encode its values as the store will. Thread."""
    try:
        with open(path, "rb") as f:
            changes = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReplicationError(f"a streamed changelog entry is not valid JSON: {e}") from None
    if not isinstance(changes, dict):
        return changes, {}
    return changes, {key: encode_value(value) for key, value in changes.items()}


def blobs_of(changes: Changes) -> list[str]:
    """The blobs a changelog entry references (file and doc records, core metadata)."""
    out: list[str] = []
    for key, value in changes.items():
        for digest in keys.record_blobs(key, value):
            if HEX64.fullmatch(digest) and digest not in out:
                out.append(digest)
    return out


def _resp_header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


async def _read_small(response: Any, clock: Any, limit: int = 64 * 1024) -> bytes:
    """An error body, bounded (a misbehaving primary must not make us buffer gigabytes)."""
    chunks: list[bytes] = []
    size = 0

    def on_data(data: bytes) -> None:
        nonlocal size
        if size < limit:
            chunks.append(data[: limit - size])
        size += len(data)

    reader = _BodyReader(clock, IDLE_TIMEOUT, on_data)
    response.deliverBody(reader)
    try:
        await reader.done
    except Exception:
        pass
    finally:
        reader.abort()
    return b"".join(chunks)


def _message(body: bytes) -> str:
    try:
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return value["message"]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace")


# -- replica side: the write proxy -------------------------------------------------------------
class WriteProxy:
    """Forwards writes to the primary; answers once this replica has the resulting serial."""

    WAIT_SECONDS = 30.0
    PROXY_TIMEOUT = 300.0

    def __init__(self, server: DevpidServer, follower: ReplicaFollower) -> None:
        self.server = server
        self.follower = follower
        self.mount = urlsplit(server.settings.outside_url or "").path.rstrip("/").encode()

    def wants(self, request: Any) -> bool:
        return request.method in WRITE_METHODS

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self._proxy(request))
        d.addErrback(lambda f: log.failure("write proxy failed", f))
        return twserver.NOT_DONE_YET

    async def _proxy(self, request: Any) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        uri: bytes = request.uri
        if self.mount and uri.startswith(self.mount + b"/"):
            uri = uri[len(self.mount) :]
        url = self.follower.primary_url.encode() + uri
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        # What this process concluded under its own --trusted-proxy rules, never the client's
        # own headers: the primary (or main process) trusts us as a proxy.
        headers.setRawHeaders(b"X-Outside-Url", [self.server.outside_url(request).encode()])
        real = client_address(request, self.server.trusted_proxies)
        headers.removeHeader(b"x-real-ip")
        if real:
            headers.setRawHeaders(b"X-Real-IP", [real.encode("latin-1", "replace")])
        addr = request.getClientAddress()
        forwarded = [*(headers.getRawHeaders(b"x-forwarded-for") or []),
                     getattr(addr, "host", "-").encode()]
        headers.setRawHeaders(b"X-Forwarded-For", [b", ".join(forwarded)])
        headers.setRawHeaders(b"X-Devpid-Via-Replica", [self.server.store.uuid.encode()])
        request.content.seek(0)
        try:
            response = await self.follower.http.request(
                request.method.decode("ascii"),
                url.decode("latin-1"),
                headers=headers,
                data=FileBodyProducer(request.content),
                unbuffered=True,
                timeout=max(self.PROXY_TIMEOUT, self.server.settings.request_timeout),
            )
            chunks: list[bytes] = []
            reader = _BodyReader(self.server.reactor, self.PROXY_TIMEOUT, chunks.append)
            response.deliverBody(reader)
            await reader.done
        except Exception as e:
            log.warn("proxying {method} {uri} to the primary failed: {error}",
                     method=request.method, uri=request.uri, error=str(e) or type(e).__name__)
            self._respond_error(request, gone, HTTPError(
                502, f"the primary server ({self.follower.primary_url}) is not reachable"))
            return
        serial_text = _resp_header(response, b"x-devpi-serial")
        synced = True
        if serial_text and serial_text.lstrip("-").isdigit():
            synced = await self.follower.wait_for_serial(int(serial_text), self.WAIT_SECONDS)
            if not synced:
                log.warn("replica did not reach serial {serial} within {t}s after a write",
                         serial=serial_text, t=self.WAIT_SECONDS)
        if gone:
            return
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in OWN_RESPONSE_HEADERS:
                request.responseHeaders.setRawHeaders(name, values)
        request.setHeader(b"X-Devpid-Replica-Serial", str(self.server.store.serial).encode())
        if not synced:
            request.setHeader(b"X-Devpid-Replica-Lagging", b"1")
        request.write(b"".join(chunks))
        request.finish()

    def _respond_error(self, request: Any, gone: list[bool], error: HTTPError) -> None:
        if gone:
            return
        request.setResponseCode(error.code, status_reason(error))
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.write(json.dumps({"message": error.message}).encode() + b"\n")
        request.finish()

