"""HTTP client for one upstream simple index (treq), with timeouts and backoff.

The mirror must stay useful when its upstream is slow, down or broken: every request here
has a hard deadline (it fires even if the upstream accepts the connection and never
answers), failures put the upstream into backoff so later requests fail at once and the
server can serve its cache, and credentials in the configured URL never leak to other
hosts.

All public request methods are ``async def``; Twisted callers wrap them with
``Deferred.fromCoroutine(...)``. Cancelling that Deferred cancels the HTTP request.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import treq.client
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, PartialDownloadError, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from devpid import __version__
from devpid.mirror.backoff import Backoff
from devpid.mirror.pagecheck import check_project_list, check_project_page
from devpid.mirror.parse import ParseError, UpstreamFile, parse_project_list, parse_project_page
from devpid.netpolicy import guarded_agent

__all__ = [
    "ACCEPT",
    "FileNotFoundUpstream",
    "ProjectNotFound",
    "ProjectPage",
    "UpstreamClient",
    "UpstreamError",
]

log = Logger()
T = TypeVar("T")

ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
_NORMALIZE_RE = re.compile(r"[-_.]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ERROR_BODY_LIMIT = 64 * 1024  # read small error bodies so the connection can be reused
_PARSE_INLINE = 64 * 1024  # bodies up to this size are parsed on the reactor (fast enough)


class UpstreamError(Exception):
    """The upstream could not give a usable answer; ``message`` says which URL and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PageTooLarge(UpstreamError):
    """The upstream's answer is larger than we accept (``max_page_size``): no backoff."""


class ProjectNotFound(Exception):
    """The upstream answered that it does not know the project (HTTP 404/410)."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(f"project {name!r} not found upstream ({url})")
        self.name = name
        self.url = url


class FileNotFoundUpstream(Exception):
    """The upstream answered 404/410 for a file URL (not an upstream failure)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"file not found upstream: {url}")
        self.url = url
        self.message = str(self)


@dataclass
class ProjectPage:
    """A fetched project page; for a 304 ``not_modified`` is True and ``files`` empty."""

    name: str
    files: list[UpstreamFile]
    etag: str | None
    upstream_serial: int | None
    not_modified: bool = False


class _Expired(Exception):
    """Internal: the request's deadline passed."""


class _TooLarge(Exception):
    """Internal: a body exceeded its size limit."""


class _Deadline:
    """One timer for a whole request; whatever is awaited when it fires is abandoned.

    Waiting goes through a separate Deferred, so the caller gets its error at the deadline
    no matter how (or whether) the underlying operation reacts to being cancelled.
    """

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._abandon: Callable[[], None] | None = None
        self._call = clock.callLater(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._abandon is not None:
            self._abandon()

    def stop(self) -> None:
        if self._call.active():
            self._call.cancel()

    async def wait(self, inner: Deferred[T]) -> T:
        cancelled = False

        def cancel(_: Deferred[T]) -> None:
            nonlocal cancelled
            cancelled = True
            inner.cancel()

        outer: Deferred[T] = Deferred(cancel)

        def relay(result: T | Failure) -> None:
            if outer.called:
                return None  # already timed out: swallow the late result or failure
            if cancelled:
                outer.errback(CancelledError())
            elif isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        def abandon() -> None:
            if not outer.called:
                outer.errback(_Expired())
            inner.cancel()

        if self.expired:
            abandon()
        self._abandon = abandon
        inner.addBoth(relay)
        try:
            return await outer
        finally:
            self._abandon = None


class _Collector(Protocol):
    """Buffers a response body up to ``limit`` bytes; can abort the connection.

    ``finished`` fires with the body and whether its framing (Content-Length or chunked)
    proved it complete; False means the connection just closed, maybe in the middle.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: Deferred[tuple[bytes, bool]] = Deferred(
            lambda _: self.abort(CancelledError())
        )

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.abort(_TooLarge(f"response body larger than {self._limit} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            delimited = reason.check(PotentialDataLoss) is None
            self.finished.callback((b"".join(self._chunks), delimited))
        else:
            self.finished.errback(reason)

    def abort(self, exc: BaseException) -> None:
        """Stop reading (the connection is closed, not reused) and fail with ``exc``."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()
        if not self.finished.called:
            self.finished.errback(exc)


def _read_body(response: IResponse, limit: int) -> Deferred[tuple[bytes, bool]]:
    collector = _Collector(limit)
    response.deliverBody(collector)
    length = response.length
    if isinstance(length, int) and length > limit:
        collector.abort(_TooLarge(f"response body of {length} bytes is larger than {limit}"))
    return collector.finished


def _normalize(name: str) -> str:
    """PEP 503 name, as used in the upstream's project URLs."""
    return _NORMALIZE_RE.sub("-", name).lower()


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return scheme, (parts.hostname or "").lower(), port


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _final_url(response: IResponse, fallback: str) -> str:
    """The URL that produced ``response`` after redirects, for resolving relative links."""
    try:
        uri = response.request.absoluteURI
    except AttributeError:
        return fallback
    return uri.decode("ascii", "replace") if isinstance(uri, bytes) else fallback


def _reason_text(exc: BaseException) -> str:
    """Human-readable cause of a connection-level failure."""
    if isinstance(exc, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ierror.DNSLookupError):
        return "DNS lookup failed"
    if isinstance(exc, ierror.TimeoutError):
        return "connect timeout"
    if isinstance(exc, ierror.ConnectError):
        return f"cannot connect: {exc}"
    if isinstance(exc, _TooLarge):
        return f"bad response: {exc}"
    reasons = getattr(exc, "reasons", None)  # ResponseFailed / ResponseNeverReceived
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(
            _reason_text(r.value) if isinstance(r, Failure) and r.value else str(r) for r in reasons
        )
        if "ResponseNeverReceived" in type(exc).__name__:
            return f"no response: {inner}"
        return f"response failed: {inner}"
    if isinstance(exc, (ierror.ConnectionLost, ierror.ConnectionDone)):
        return "connection lost"
    if isinstance(exc, PartialDownloadError):
        return "incomplete body"
    return f"{type(exc).__name__}: {exc}"


class UpstreamClient:
    """Talks to one upstream simple index: project pages, the project list and files."""

    max_page_size = 128 * 1024 * 1024
    max_list_size = 512 * 1024 * 1024

    def __init__(
        self,
        base_url: str,
        *,
        reactor: IReactorTime,
        http_client: treq.client.HTTPClient | None = None,
        timeout: float = 5.0,
        list_timeout: float = 30.0,
        user_agent: str = f"devpid/{__version__}",
        backoff: Backoff | None = None,
        max_persistent_per_host: int = 8,
        allow_private: bool = False,
        file_hosts: set[str] | None = None,
    ) -> None:
        """``reactor`` must provide TCP/TLS and time; credentials in ``base_url`` are
        removed from it and sent as Basic auth to the upstream's own origin only.

        Connections never reach private addresses unless ``allow_private`` (see
        devpid/netpolicy.py); file URLs must be on one of ``file_hosts`` (None: any host)."""
        parts = urlsplit(base_url)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host/...: {base_url!r}")
        self._auth: bytes | None = None
        if parts.username is not None or parts.password is not None:
            user = unquote(parts.username or "")
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode())
            self._auth = b"Basic " + token
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        netloc = parts.netloc.rpartition("@")[2]
        self.base_url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self._origin = _origin(self.base_url)
        self._reactor = reactor
        self.timeout = timeout
        self.list_timeout = list_timeout
        self.user_agent = user_agent
        self.backoff = backoff if backoff is not None else Backoff(reactor, name=self.base_url)
        self.file_hosts = file_hosts
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = max_persistent_per_host
            agent = guarded_agent(reactor, self._pool, allow_private=allow_private)
            http_client = treq.client.HTTPClient(agent)
        self._http = http_client

    # -- helpers --------------------------------------------------------------------------

    def _prepare(self, url: str, accept: str) -> tuple[str, Headers, bool]:
        """Strip userinfo from ``url``; add auth only if it is on the upstream's origin."""
        clean = _strip_credentials(url)
        on_upstream = _origin(clean) == self._origin
        headers = Headers()
        headers.setRawHeaders(b"Accept", [accept.encode("ascii")])
        headers.setRawHeaders(b"User-Agent", [self.user_agent.encode("utf-8", "replace")])
        if self._auth is not None and on_upstream:
            headers.setRawHeaders(b"Authorization", [self._auth])
        return clean, headers, on_upstream

    def _backoff_error(self, url: str) -> UpstreamError:
        retry_at = self.backoff.retry_at or 0.0
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(retry_at))
        return UpstreamError(
            f"upstream {url}: in backoff until {until} after: {self.backoff.last_error}"
        )

    async def _send(
        self,
        url: str,
        headers: Headers,
        deadline: _Deadline,
    ) -> IResponse:
        """GET with redirects; connection-level failures become UpstreamError."""
        try:
            d = cast(
                "Deferred[IResponse]",
                self._http.get(url, headers=headers, allow_redirects=True, unbuffered=True),
            )
            response = await deadline.wait(d)
        except CancelledError:
            raise
        except _Expired:
            raise UpstreamError(f"upstream {url}: timeout after {deadline.seconds:g} s") from None
        except Exception as e:
            raise UpstreamError(f"upstream {url}: {_reason_text(e)}") from e
        return response

    async def _body(
        self, url: str, response: IResponse, limit: int, deadline: _Deadline
    ) -> tuple[bytes, bool]:
        """The body and whether its HTTP framing proved it complete."""
        try:
            return await deadline.wait(_read_body(response, limit))
        except CancelledError:
            raise
        except _Expired:
            raise UpstreamError(
                f"upstream {url}: timeout after {deadline.seconds:g} s (reading body)"
            ) from None
        except _TooLarge as e:
            raise PageTooLarge(f"upstream {url}: {_reason_text(e)}") from e
        except Exception as e:
            raise UpstreamError(f"upstream {url}: {_reason_text(e)}") from e

    async def _discard(self, response: IResponse, deadline: _Deadline) -> None:
        """Drain a small error body so the connection can go back to the pool."""
        try:
            await deadline.wait(_read_body(response, _ERROR_BODY_LIMIT))
        except CancelledError:
            raise
        except Exception:
            pass  # the collector closed the connection; nothing else to do

    async def _get_index(
        self,
        url: str,
        etag: str | None,
        timeout: float,
        limit: int,
        parse: Callable[[IResponse, bytes, bool], Awaitable[T]],
    ) -> tuple[IResponse, T | None]:
        """Fetch and ``parse`` an index page under backoff control: (response, parsed or None).

        None for 304 and 404/410 (body drained). ``parse`` gets the 200 body and whether its
        framing proved it complete; its ParseError is an upstream failure like a 500, so it is
        recorded in the backoff state (once) before any success is. Other statuses and
        failures raise UpstreamError.
        """
        if self.backoff.in_backoff():
            raise self._backoff_error(url)
        clean, headers, _ = self._prepare(url, ACCEPT)
        if etag:
            headers.setRawHeaders(b"If-None-Match", [etag.encode("latin-1", "replace")])
        self.backoff.attempt()
        deadline = _Deadline(self._reactor, timeout)
        verdict = False
        try:
            try:
                response = await self._send(clean, headers, deadline)
                code = response.code
                parsed: T | None = None
                if code == 200:
                    body, delimited = await self._body(clean, response, limit, deadline)
                    try:
                        parsed = await parse(response, body, delimited)
                    except ParseError as e:
                        raise UpstreamError(f"upstream {clean}: bad response: {e}") from e
                elif code == 304:
                    pass
                elif code in (404, 410):
                    await self._discard(response, deadline)
                else:
                    await self._discard(response, deadline)
                    phrase = response.phrase.decode("latin-1", "replace")
                    raise UpstreamError(f"upstream {clean}: HTTP {code} {phrase}".rstrip())
            except PageTooLarge:
                # The upstream answered; the page is over our bound. Other projects are fine.
                self.backoff.succeeded()
                verdict = True
                raise
            except UpstreamError as e:
                self.backoff.failed(e.message)
                verdict = True
                raise
            self.backoff.succeeded()
            verdict = True
            return response, parsed
        finally:
            deadline.stop()
            if not verdict:
                self.backoff.release()

    # -- public API -----------------------------------------------------------------------

    def project_url(self, name: str) -> str:
        """The upstream URL of a project's page (normalized name, safely quoted)."""
        return f"{self.base_url}{quote(_normalize(name), safe='')}/"

    async def get_project(self, name: str, etag: str | None = None) -> ProjectPage:
        """Fetch a project page; 404 -> ProjectNotFound, 304 -> ``not_modified``.

        Raises UpstreamError at once, without contacting the upstream, while in backoff.
        """
        url = self.project_url(name)

        async def parse(
            response: IResponse, body: bytes, delimited: bool
        ) -> tuple[str, list[UpstreamFile]]:
            content_type = _header(response, b"Content-Type") or ""
            base = _final_url(response, url)

            def work() -> tuple[str, list[UpstreamFile]]:
                display, files = parse_project_page(body, content_type, base, name)
                check_project_page(body, content_type, len(files), delimited)
                return display, files

            # A page of a project with 50,000 files takes seconds to parse: off the reactor.
            return await self._parse_off_reactor(len(body), work)

        response, parsed = await self._get_index(
            url, etag, self.timeout, self.max_page_size, parse
        )
        serial_text = _header(response, b"X-PyPI-Last-Serial")
        try:
            serial = int(serial_text) if serial_text is not None else None
        except ValueError:
            serial = None
        new_etag = _header(response, b"ETag")
        if response.code in (404, 410):
            raise ProjectNotFound(name, url)
        if parsed is None:  # 304
            return ProjectPage(name, [], new_etag or etag, serial, not_modified=True)
        display, files = parsed
        return ProjectPage(display, files, new_etag, serial, not_modified=False)

    async def _parse_off_reactor(self, size: int, f: Callable[..., T], *args: Any) -> T:
        """``f(*args)`` in the reactor's thread pool, unless the input is small."""
        if size <= _PARSE_INLINE:
            return f(*args)
        reactor: Any = self._reactor
        result: T = await deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
        return result

    async def get_project_list(
        self, etag: str | None = None
    ) -> tuple[list[str] | None, str | None]:
        """All project names (None for a 304) and the new ETag; uses ``list_timeout``."""
        url = self.base_url

        async def parse(response: IResponse, body: bytes, delimited: bool) -> list[str]:
            content_type = _header(response, b"Content-Type") or ""
            check_project_list(body, content_type, delimited)
            # A PyPI-sized list takes most of a second to parse: keep it off the reactor.
            reactor: Any = self._reactor
            names: list[str] = await deferToThreadPool(
                reactor, reactor.getThreadPool(), parse_project_list, body, content_type
            )
            return names

        response, names = await self._get_index(
            url, etag, self.list_timeout, self.max_list_size, parse
        )
        new_etag = _header(response, b"ETag")
        if response.code in (404, 410):
            raise UpstreamError(f"upstream {url}: HTTP {response.code} for the project list")
        if names is None:
            return None, new_etag or etag
        return names, new_etag

    async def _open(self, url: str, deadline: _Deadline) -> tuple[str, IResponse]:
        """Headers of a file GET; backoff applies only to files on the upstream's origin."""
        clean, headers, on_upstream = self._prepare(url, "*/*")
        if _origin(clean) is None or urlsplit(clean).scheme.lower() not in _DEFAULT_PORTS:
            raise UpstreamError(f"upstream {clean}: not an http(s) URL")
        if not self.file_host_allowed(clean):
            raise UpstreamError(
                f"upstream {clean}: the host is neither the upstream's nor in --mirror-file-hosts"
            )
        if on_upstream and self.backoff.in_backoff():
            raise self._backoff_error(clean)
        try:
            response = await self._send(clean, headers, deadline)
        except UpstreamError as e:
            if on_upstream:
                self.backoff.failed(e.message)
            raise
        if on_upstream:
            self.backoff.succeeded()
        if response.code == 200:
            return clean, response
        await self._discard(response, deadline)
        if response.code in (404, 410):
            raise FileNotFoundUpstream(clean)
        phrase = response.phrase.decode("latin-1", "replace")
        raise UpstreamError(f"upstream {clean}: HTTP {response.code} {phrase}".rstrip())

    def file_host_allowed(self, url: str) -> bool:
        """Whether a file URL (or an external-URL redirect) may point at this host."""
        if self.file_hosts is None or "*" in self.file_hosts:
            return True
        origin = _origin(url)
        return origin is not None and origin[1].rstrip(".") in self.file_hosts

    async def open_file(self, url: str) -> IResponse:
        """Start downloading a file; returns once headers arrived (the timeout covers only
        them) so the caller can stream the body with ``deliverBody``/``treq.collect``.

        Non-200 -> UpstreamError, 404/410 -> FileNotFoundUpstream.
        """
        deadline = _Deadline(self._reactor, self.timeout)
        try:
            _, response = await self._open(url, deadline)
        finally:
            deadline.stop()
        return response

    async def get_bytes(self, url: str, max_size: int) -> bytes:
        """Whole body of a small file (e.g. PEP 658 ``.metadata``) within ``timeout``."""
        deadline = _Deadline(self._reactor, self.timeout)
        try:
            clean, response = await self._open(url, deadline)
            body, _ = await self._body(clean, response, max_size, deadline)
            return body
        finally:
            deadline.stop()

    def status(self) -> dict[str, Any]:
        """JSON-able health of this upstream for ``/+status`` (no credentials)."""
        return {"url": self.base_url, **self.backoff.status()}

    async def close(self) -> None:
        """Close idle pooled connections (only the pool this client created)."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()
