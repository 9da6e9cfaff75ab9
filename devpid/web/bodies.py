"""Request bodies a client cannot use against the server: too large or too slow.

A body announced larger than ``--max-upload-size`` is answered with 413 as soon as the head
has arrived, without a ``100 Continue`` and without reading the body; the connection is then
closed. A body must arrive within ``--body-timeout`` seconds plus one second per
``MIN_RATE`` bytes announced (or received, for chunked bodies): a client trickling a byte a
minute gets 408 and the connection is closed, instead of holding it (and a buffer) forever.
"""

from __future__ import annotations

import json
from typing import Any

from devpid.web.errors import JSON_TYPE, reason_phrase

MIN_RATE = 64 * 1024  # bytes per second a slow but honest uplink still manages
DEFAULT_BODY_TIMEOUT = 60.0


def answer_and_close(request: Any, code: int, message: str) -> None:
    """A complete JSON error written straight to the connection, which is then closed
    (the request is not processed; what is left of its body is never read)."""
    body = json.dumps({"message": message}).encode() + b"\n"
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (code, reason_phrase(message), JSON_TYPE, len(body))
    )
    request.devpid_answered = True
    channel = request.channel
    if channel is None or channel.transport is None:
        return
    channel.transport.write(head + body)
    channel.loseConnection()


def refuse_oversized(request: Any, length: int | None, limit: int) -> bool:
    """True (and the 413 sent) if the announced length is over ``limit``."""
    if length is None or length <= limit:
        return False
    # twisted.web sends "100 Continue" right after this; the client must not start sending.
    request.requestHeaders.removeHeader(b"expect")
    answer_and_close(request, 413, f"request body exceeds the upload limit of {limit} bytes")
    return True


class BodyDeadline:
    """Watches one request's body; answers 408 and closes when it arrives too slowly."""

    def __init__(self, request: Any, length: int | None, timeout: float) -> None:
        self.request = request
        self.length = length
        self.timeout = timeout
        self.received = 0
        self.call_later: Any = getattr(request.channel, "callLater", None)
        if self.call_later is None:
            from twisted.internet import reactor

            self.call_later = reactor.callLater
        self.started = self._now()
        self.call: Any = self.call_later(self._allowed(), self._check)

    def _now(self) -> float:
        clock = getattr(self.call_later, "__self__", None)
        seconds = getattr(clock, "seconds", None)
        if seconds is None:
            import time

            return time.monotonic()
        return float(seconds())

    def _allowed(self) -> float:
        size = self.length if self.length is not None else self.received
        return self.timeout + size / MIN_RATE

    def _check(self) -> None:
        self.call = None
        remaining = self._allowed() - (self._now() - self.started)
        if self.length is None and remaining > 0:  # chunked: more bytes earn more time
            self.call = self.call_later(remaining, self._check)
            return
        answer_and_close(self.request, 408, "request body not received in time")

    def got(self, size: int) -> None:
        self.received += size

    def done(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


__all__ = ["BodyDeadline", "answer_and_close", "refuse_oversized"]
