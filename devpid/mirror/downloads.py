"""One upstream download per uncached mirror file, shared by every client that asks.

The download fills a temp blob at upstream speed, independent of any client: each client
tails the growing file with its own producer, so a slow or vanished client neither slows
the download nor holds the bytes in memory, and uv aborting a download it no longer needs
does not stop the file from being cached. Only when the whole body arrived, its length
matches and its hash matches what the upstream page promised is the blob committed and
recorded; a failed or mismatching download is discarded and never served as good.

Readers never get the last byte before that check passed: they stop one byte short of the
end until the download is verified, and on a mismatch their connection is aborted, so a
client's Content-Length (or chunked framing) is never satisfied by bad bytes. A watchdog
aborts a download that stalls (no byte for ``idle_timeout`` seconds) or trickles (fewer than
``min_rate`` bytes/s over any ``idle_timeout`` window): its readers are cut off the same way
and the next request starts afresh, so nobody waits forever on a stuck upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from devpid.store.base import write_failed

log = Logger()
READ_CHUNK = 256 * 1024


class DownloadFailed(Exception):
    pass


class Download:
    """An upstream body being written to a temp blob while clients read along."""

    def __init__(
        self,
        *,
        url: str,
        tmp: Path,
        out: Any,
        expected: dict[str, str],
        expected_size: int | None,
        on_done: Callable[[Download], Deferred[Any]],
        on_failed: Callable[[Download], None] | None = None,
    ) -> None:
        self.url = url
        self.tmp = tmp
        self._out = out
        self.expected = expected
        self.expected_size = expected_size
        self.written = 0
        self.content_type: str | None = None
        self.finished = False
        self.error: str | None = None
        self.committed = Deferred[Any]()  # fires (or fails) after the blob is recorded
        self._sha256 = hashlib.sha256()
        self._others = {
            name: hashlib.new(name) for name in expected if name in hashlib.algorithms_available
            and name != "sha256"
        }
        self._waiters: list[Callable[[], None]] = []
        self._on_done = on_done
        self._on_failed = on_failed
        self.sha256: str | None = None
        self._clock: IReactorTime | None = None
        self._timer: IDelayedCall | None = None
        self._stop_upstream: Callable[[], None] = lambda: None
        self._idle = 0.0
        self._min_rate = 0.0
        self._last_data = self._window_start = 0.0
        self._window_bytes = 0

    # -- the watchdog ---------------------------------------------------------------------
    def watch(
        self,
        clock: IReactorTime,
        idle_timeout: float,
        min_rate: float,
        stop_upstream: Callable[[], None],
    ) -> None:
        """Abort (and ``stop_upstream``) if no byte comes for ``idle_timeout`` seconds or
        fewer than ``min_rate`` bytes/s arrive over an ``idle_timeout`` window (0: no minimum).
        """
        if self.finished:
            return
        self._clock, self._idle, self._min_rate = clock, idle_timeout, min_rate
        self._stop_upstream = stop_upstream
        now = clock.seconds()
        self._last_data = self._window_start = now
        self._window_bytes = self.written
        self._timer = clock.callLater(idle_timeout, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.finished or self._clock is None:
            return
        now = self._clock.seconds()
        if now - self._last_data >= self._idle:
            self.abort(f"stalled: no data for {self._idle:g} s after {self.written} bytes")
            return
        next_at = self._last_data + self._idle
        if self._min_rate:
            elapsed = now - self._window_start
            if elapsed >= self._idle:
                rate = (self.written - self._window_bytes) / elapsed
                if rate < self._min_rate:
                    self.abort(
                        f"too slow: {rate:.0f} bytes/s over {elapsed:.1f} s, below the "
                        f"minimum of {self._min_rate:g} bytes/s"
                    )
                    return
                self._window_start, self._window_bytes = now, self.written
            next_at = min(next_at, self._window_start + self._idle)
        self._timer = self._clock.callLater(max(0.0, next_at - now), self._check)

    def abort(self, error: str) -> None:
        """Give up now: readers are cut off, the temp blob goes, the upstream is closed."""
        if self.finished:
            return
        self.end(error)
        self._stop_upstream()

    def sendable(self) -> int:
        """How many bytes readers may send: all once verified, never the last one before."""
        if self.finished:
            return self.written if self.error is None else 0
        limit = self.written - 1
        if self.expected_size is not None:
            limit = min(limit, self.expected_size - 1)
        return max(0, limit)

    # -- fed by the upstream response protocol --------------------------------------------
    def data(self, chunk: bytes) -> None:
        if self.finished:
            return  # aborted (stalled, too slow, disk full): the rest is dropped
        if self._clock is not None:
            self._last_data = self._clock.seconds()
        try:
            self._out.write(chunk)
            self._out.flush()
        except OSError as e:  # readers are cut off, the temp file goes now
            self.end(str(write_failed("storing a mirror file", e)))
            return
        self._sha256.update(chunk)
        for h in self._others.values():
            h.update(chunk)
        self.written += len(chunk)
        self._wake()

    def end(self, error: str | None) -> None:
        if self.finished:
            return  # already aborted (watchdog, disk full)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        try:
            self._out.close()
        except OSError as e:  # its last flush failed
            error = error or str(write_failed("storing a mirror file", e))
        if error is None:
            error = self._verify()
        self.error = error
        self.finished = True
        self.sha256 = self._sha256.hexdigest()
        self._wake()
        if error is not None:
            log.warn("download of {url} failed: {error}", url=self.url, error=error)
            self.tmp.unlink(missing_ok=True)
            if self._on_failed is not None:
                self._on_failed(self)
            self.committed.errback(Failure(DownloadFailed(error)))
            return
        d = self._on_done(self)
        d.addCallbacks(self.committed.callback, self.committed.errback)

    def _verify(self) -> str | None:
        if self.expected_size is not None and self.written != self.expected_size:
            return f"size mismatch: got {self.written} bytes, expected {self.expected_size}"
        want = self.expected.get("sha256")
        if want and want.lower() != self._sha256.hexdigest():
            return "sha256 mismatch: the upstream file does not match its published hash"
        for name, h in self._others.items():
            if self.expected[name].lower() != h.hexdigest():
                return f"{name} mismatch: the upstream file does not match its published hash"
        return None

    # -- for readers ----------------------------------------------------------------------
    def wait(self, callback: Callable[[], None]) -> None:
        self._waiters.append(callback)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            try:
                w()
            except Exception:
                log.failure("download reader failed")


class BodyToDownload(Protocol):
    """Receives the upstream body into a Download; detects truncation."""

    def __init__(self, download: Download) -> None:
        self.download = download

    def dataReceived(self, data: bytes) -> None:
        self.download.data(data)
        if self.download.finished:
            self.stop()  # it failed: stop fetching the rest

    def stop(self) -> None:
        """Close the upstream connection (it is not reused) and stop reading."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.download.end(None)
        elif reason.check(PotentialDataLoss):
            # No Content-Length and the connection closed: only the hash can vouch.
            self.download.end(None if self.download.expected.get("sha256") else
                              "connection closed without a length or hash to verify")
        else:
            self.download.end(f"connection lost after {self.download.written} bytes")


@implementer(IPushProducer)
class TailProducer:
    """Sends a growing file to one client as the download writes it."""

    def __init__(self, request: Any, download: Download) -> None:
        self.request = request
        self.download = download
        self.file = open(download.tmp, "rb")  # noqa: SIM115 (closed in _close)
        self.offset = 0
        self.paused = False
        self.closed = False
        request.notifyFinish().addErrback(lambda _: self._close())

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        download = self.download
        while not self.paused and not self.closed:
            if download.error is not None:
                self._abort()
                return
            limit = download.sendable()
            if self.offset < limit:
                chunk = self.file.read(min(READ_CHUNK, limit - self.offset))
                if chunk:
                    self.offset += len(chunk)
                    self.request.write(chunk)
                    continue
                self._abort()  # the temp file is shorter than the download says: never guess
                return
            if download.finished:
                self._finish()
                return
            download.wait(self._pump)
            return

    def _finish(self) -> None:
        self._close()
        self.request.unregisterProducer()
        self.request.finish()

    def _abort(self) -> None:
        # The client must see a failed download, not a short "complete" file.
        self._close()
        self.request.unregisterProducer()
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file.close()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._pump()

    def stopProducing(self) -> None:
        self._close()
