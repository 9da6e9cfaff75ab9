"""The front door for the requests installers make most, without twisted.web's Request.

twisted.web spends most of a cached page's ~300 µs on generic work: splitting lines, building
a Request and its Headers, and a reactor round trip (two ``epoll_ctl`` calls) per answer. On
an idle keep-alive connection, a read that holds exactly one complete ``GET``/``HEAD``
without a body is parsed here in one pass and offered to devpid's fast paths (cached simple
pages, stored files, nginx's file check; see :mod:`devpid.web.fastpath`). An answer they
give is written with one ``send`` (files continue with sendfile); anything they decline, and
every other kind of request (bodies, pipelining, HTTP/1.0, ``Connection: close``, odd
framing), goes to twisted.web untouched, so the two can never disagree on what was sent.

Both kinds of answer share the channel's timeouts: a request head (from a new connection's
start, or from a keep-alive connection's first byte of the next request) must be complete
within ``--header-timeout`` seconds, however slowly its bytes trickle in (else ``408`` and
close), and a keep-alive connection without a request is closed after ``--idle-timeout``
seconds (twisted.web's own idle timer, the site's ``timeOut``). The site's
:class:`~devpid.web.connections.ConnectionLimit` sees every channel.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import datetimeToString, unquote
from twisted.web.server import NOT_DONE_YET, version

from devpid.readacl import fast_readable
from devpid.web.errors import HTTPError

# A fast path: (server, request, decoded path segments) -> None (decline), bytes (the body),
# or NOT_DONE_YET (it streams and calls request.finish()).
FastPath = Callable[[Any, Any, list[bytes]], Any]
# Headers whose presence sends a request to twisted.web: a body or a change of protocol.
_SLOW_HEADERS = (b"transfer-encoding", b"expect", b"upgrade")
_NO_BODY_CODES = (204, 304)
_HEAD_TIMEOUT_BODY = b'{"message": "request head not received in time"}\n'
_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_HEAD_TIMEOUT_BODY)
) + _HEAD_TIMEOUT_BODY
# twisted.web refuses more than this many header lines with 400 (HTTPChannel.maxHeaders).
MAX_HEADERS = http.HTTPChannel.maxHeaders
# The one request grammar (RFC 9112 sections 3 and 5, RFC 9110 section 5.6.2) a head must
# follow, whole, to be answered here: a GET/HEAD request line with a visible-ASCII target,
# then at most MAX_HEADERS ``token ":" value`` lines whose values hold only VCHAR, obs-text,
# SP and HTAB, each line ended by CRLF. So a bare CR or LF (which could hide a header), a
# NUL or other control byte, a name that is not a token, obs-fold, or too many headers never
# get here: twisted.web sees them and answers 400 (or, for what it tolerates, its own
# answer), and the two paths can never read one request differently. parse_request checks
# it with bytes.translate/count (C loops): this runs for every cached page, and a regular
# expression over the head cost a tenth of the fast path's time.
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR = bytes(range(0x21, 0x7F))
_HEAD_BYTES = _VCHAR + bytes(range(0x80, 0x100)) + b" \t\r\n"
log = Logger()
_date: list[Any] = [0, b""]


def tcp_unqueued(transport: Any) -> tcp.Connection | None:
    """The TCP connection when nothing waits in Twisted's buffer for it, else None: only then
    may bytes go to its socket directly (send, sendfile) without overtaking queued ones."""
    if (
        isinstance(transport, tcp.Connection)
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        return transport
    return None


def _http_date() -> bytes:
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, datetimeToString(now)
    value: bytes = _date[1]
    return value


class _RequestHeaders:
    """The read side of twisted's Headers, over a dict built in one pass."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[bytes, list[bytes]]) -> None:
        self.raw = raw

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        return self.raw.get(name.lower(), default)

    def hasHeader(self, name: bytes) -> bool:
        return name.lower() in self.raw


class FastRequest:
    """Just as much of twisted.web's Request as devpid's fast paths and FileSender use."""

    clientproto = b"HTTP/1.1"

    def __init__(self, channel: FastHTTPChannel, method: bytes, uri: bytes,
                 headers: dict[bytes, list[bytes]]) -> None:
        self.channel = channel
        self.method = method
        self.uri = uri
        self.requestHeaders = _RequestHeaders(headers)
        self.code = 200
        self.out: dict[bytes, bytes] = {}
        self.startedWriting = False
        self.finished = False
        self.sentLength = 0
        self.devpid_started = time.monotonic()
        self.devpid_serial_set = True

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.out[name] = value  # head() keeps each header on its line

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def getClientAddress(self) -> Any:
        transport: Any = self.channel.transport
        return transport.getPeer()

    def head(self, content_length: int | None) -> bytes:
        """Status line and headers (with Content-Length when given)."""
        reason = http.RESPONSES.get(self.code, b"Unknown Status")
        parts = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
                 % (self.code, reason, version, _http_date())]
        out = self.out
        if content_length is not None and b"Content-Length" not in out:
            out[b"Content-Length"] = b"%d" % content_length
        lines = b"".join([b"%s: %s\r\n" % item for item in out.items()])
        if lines.count(b"\r") != len(out) or lines.count(b"\n") != len(out):
            # Like twisted's Headers: CR and LF become a space, so no value (say, one derived
            # from a request header) can end the line and add a header of its own. Checked
            # on the whole block, once per answer: this runs for every cached page.
            lines = b"".join([b"%s: %s\r\n" % (_one_line(name), _one_line(value))
                              for name, value in out.items()])
        parts.append(lines)
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- what a producer (FileSender) needs -----------------------------------------------
    def send_head(self) -> bool:
        """Put status line and headers into an empty socket now, corked (``MSG_MORE``) so
        they leave in one segment with the body's start; False if that cannot be done."""
        transport = tcp_unqueued(self.channel.transport)
        if self.startedWriting or self.method == b"HEAD" or transport is None:
            return False
        head = self.head(None)
        try:
            sent = transport.socket.send(head, socket.MSG_MORE)
        except OSError:
            return False
        self.startedWriting = True
        if sent < len(head):
            transport.write(head[sent:])
        return True

    def write(self, data: bytes) -> None:
        if self.method == b"HEAD":
            data = b""
        self.sentLength += len(data)
        if not self.startedWriting:
            self.startedWriting = True
            data = self.head(None) + data
        self.channel.send_now(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.channel.unregisterProducer()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.channel.fast_finished(self)


def _one_line(value: bytes) -> bytes:
    """``value`` with each CR, LF or CRLF replaced by a space (as twisted's Headers does)."""
    return b" ".join(value.splitlines()) if b"\r" in value or b"\n" in value else value


def parse_request(data: bytes) -> tuple[bytes, bytes, dict[bytes, list[bytes]]] | None:
    """(method, uri, headers) of one complete, body-less GET/HEAD, or None (not for us:
    anything outside the grammar described above goes to twisted.web)."""
    crlf = data.count(b"\r\n")
    if (not data.endswith(b"\r\n\r\n") or data.translate(None, _HEAD_BYTES)
            or data.count(b"\r") != crlf or data.count(b"\n") != crlf):
        return None  # a control byte, or a bare CR or LF somewhere
    lines = data[:-4].split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        return None
    parts = lines[0].split(b" ")
    if (len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD")
            or parts[1][:1] != b"/" or parts[1].translate(None, _VCHAR)):
        return None
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name.translate(None, _TOKEN_CHARS):
            return None  # folded, malformed or not a token: twisted.web decides
        headers.setdefault(name.lower(), []).append(value.strip())
    for slow in _SLOW_HEADERS:
        if slow in headers:
            return None
    length = headers.get(b"content-length")
    if length is not None and length != [b"0"]:
        return None
    connection = headers.get(b"connection")
    if connection is not None and any(b"close" in v.lower() for v in connection):
        return None
    return parts[0], parts[1], headers


class FastHTTPChannel(http.HTTPChannel):
    """HTTPChannel that answers devpid's hot GETs itself (see the module docstring)."""

    site: Any
    _fast_request: FastRequest | None = None
    _fast_pending: list[bytes] | None = None
    _head_call: Any = None
    _lost = False
    # Monotonic time since when no request is in progress (None: one is), for eviction.
    devpid_waiting_since: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        limit = getattr(self.site, "devpid_connections", None)
        if limit is not None:
            limit.opened(self)
        self.devpid_waiting_since = time.monotonic()
        self._arm_head_deadline()  # a new connection owes us its first request head

    def _arm_head_deadline(self) -> None:
        timeout = getattr(self.site, "devpid_header_timeout", None)
        if self._head_call is None and timeout:
            self._head_call = self.callLater(timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        call, self._head_call = self._head_call, None
        if call is not None and call.active():
            call.cancel()

    def _busy(self) -> bool:
        """A request is in progress: its body arrives (raw mode), or it is being answered."""
        return bool(self._handlingRequest or self._fast_request is not None
                    or (self.requests and not self.line_mode))

    def _head_timed_out(self) -> None:
        """The head did not arrive in time: say so and close (a trickle cannot extend it)."""
        self._head_call = None
        if self._busy():
            return
        transport: Any = self.transport
        transport.write(_HEAD_TIMEOUT)
        self.timeoutConnection()

    def _input_seen(self) -> None:
        """After input was handled: track whether a head is owed, a request runs, or neither."""
        if self._lost:
            return
        if self._busy():
            self._cancel_head_deadline()
            self.devpid_waiting_since = None
            return
        if self.devpid_waiting_since is None:
            self.devpid_waiting_since = time.monotonic()
        if self._buffer or self.requests:  # part of a head: its deadline runs from its start
            self._arm_head_deadline()
        else:  # waiting for the next request: only the idle timeout applies
            self._cancel_head_deadline()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self._input_seen()

    def _idle(self) -> bool:
        return bool(
            not self.requests
            and not self._handlingRequest
            and not self._dataBuffer
            and not self._buffer  # LineReceiver's partial line
            and self.line_mode == 1
            and self.persistent
            and self._fast_request is None
        )

    def dataReceived(self, data: bytes) -> None:
        if self._fast_request is not None:  # a fast file is still streaming: wait for it
            assert self._fast_pending is not None
            self._fast_pending.append(data)
            transport: Any = self.transport
            transport.pauseProducing()
            return
        if (
            len(data) <= self.totalHeadersSize
            and (data[:4] == b"GET " or data[:5] == b"HEAD ")
            and data[-4:] == b"\r\n\r\n"
            and data.find(b"\r\n\r\n") == len(data) - 4
            and self._idle()
        ):
            parsed = parse_request(data)
            if parsed is not None:
                answer = getattr(self.site, "devpid_fast", None)
                if answer is not None and self._answer(answer, FastRequest(self, *parsed)):
                    self._input_seen()
                    return
        super().dataReceived(data)
        self._input_seen()

    def _answer(self, answer: Callable[[FastRequest], bool], request: FastRequest) -> bool:
        """Let the fast paths answer; an error before anything was sent falls back to
        twisted.web (whose route answers with a JSON error), never a dropped connection."""
        self.resetTimeout()
        try:
            return answer(request)
        except Exception:
            log.failure("fast path failed for {method} {uri}", method=request.method,
                        uri=request.uri)
            if not request.startedWriting and not request.finished and self._fast_request is None:
                self.unregisterProducer()  # (a producer that failed before its first byte)
                return False
            transport: Any = self.transport
            transport.abortConnection()  # half an answer went out: the client must not trust it
            return True

    def send_now(self, data: bytes) -> None:
        """Write ``data``: straight to the socket when nothing is queued, else queued."""
        transport: Any = self.transport
        direct = tcp_unqueued(transport)
        if direct is not None and direct.connected and not direct.disconnecting:
            try:
                sent = direct.socket.send(data)
            except OSError:  # EAGAIN or worse: the transport finds out and copes
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def fast_started(self, request: FastRequest) -> None:
        """A fast answer streams on (a file): hold later requests until it is done."""
        self._fast_request = request
        self._fast_pending = []
        # Like twisted.web while it handles a request: no idle timeout mid-response.
        self._savedTimeOut = self.setTimeout(None)

    def fast_finished(self, request: FastRequest) -> None:
        log_request(self.site, request)
        if self._fast_request is not request:
            return
        self._fast_request = None
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        pending, self._fast_pending = self._fast_pending or [], None
        transport: Any = self.transport
        transport.resumeProducing()
        if pending:
            self.dataReceived(b"".join(pending))
        else:
            self._input_seen()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_head_deadline()
        self.devpid_waiting_since = None
        limit = getattr(self.site, "devpid_connections", None)
        if limit is not None:
            limit.closed(self)
        if self._fast_request is not None:
            self._fast_request = None
            producer, self._requestProducer = self._requestProducer, None
            if producer is not None:
                producer.stopProducing()
        super().connectionLost(reason)


def log_request(site: Any, request: Any) -> None:
    """The access-log line twisted.web would write for ``request``."""
    site_log = getattr(site, "log", None)
    if site_log is not None:
        site_log(request)


class FastAnswer:
    """The site's ``devpid_fast``: True when one of ``fast_paths`` answered ``request``.

    ``count`` (answers given) is reported in ``/+status`` as ``fast-requests``, per process.
    """

    def __init__(self, server: Any, fast_paths: tuple[FastPath, ...],
                 prepare: Callable[[Any, list[bytes]], list[bytes] | HTTPError]) -> None:
        self.server = server
        self.fast_paths = fast_paths
        self.prepare = prepare
        self.count = 0

    def status(self) -> dict[str, Any]:
        return {"fast-requests": self.count}

    def __call__(self, request: FastRequest) -> bool:
        path = request.uri
        if b"?" in path or b"#" in path or not path.startswith(b"/"):
            return False
        decoded = self.prepare(request, [unquote(s) for s in path[1:].split(b"/")])
        if isinstance(decoded, HTTPError) or not fast_readable(self.server, request, decoded):
            return False  # private indexes without known credentials: twisted.web's route
        channel = request.channel
        for fast_path in self.fast_paths:
            result = fast_path(self.server, request, decoded)
            if result is None:
                continue
            self.count += 1
            if result == NOT_DONE_YET:
                if not request.finished:  # (a file sent at once has finished already)
                    channel.fast_started(request)
                return True
            if request.code in _NO_BODY_CODES:
                data = request.head(None)
            else:
                data = request.head(len(result))
                if request.method != b"HEAD":
                    data += result
                    request.sentLength = len(result)
            channel.send_now(data)
            request.finished = True
            log_request(channel.site, request)
            return True
        return False
