"""Tests for devpid.mirror.backoff and devpid.mirror.fetcher.

The fetcher is exercised against small real twisted.web servers on 127.0.0.1 (started
inside the tests), because timeouts, redirects, connection reuse and auth headers are
exactly what a fake transport would hide.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from devpid.mirror.backoff import Backoff
from devpid.mirror.fetcher import (
    ACCEPT,
    FileNotFoundUpstream,
    ProjectNotFound,
    UpstreamClient,
    UpstreamError,
)

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
H1 = "a" * 64

# -- Backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_maximum_and_resets() -> None:
    clock = Clock()
    clock.advance(1000)
    b = Backoff(clock, random=lambda: 0.0)
    assert not b.in_backoff()
    assert b.retry_at is None and b.delay == 0.0
    delays = []
    for _ in range(9):
        b.failed("boom")
        delays.append(b.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert b.in_backoff()
    assert b.retry_at == 1060.0
    clock.advance(59.9)
    assert b.in_backoff()
    clock.advance(0.1)
    assert not b.in_backoff()
    b.succeeded()
    assert not b.in_backoff()
    assert b.status() == {
        "last_success": 1060.0,
        "last_failure": 1000.0,
        "last_error": "boom",
        "in_backoff": False,
        "retry_at": None,
        "consecutive_failures": 0,
        "failures_total": 9,  # a counter for /+metrics: success does not reset it
    }
    b.failed("again")
    assert b.delay == 1.0  # starts over after a success


def test_backoff_jitter_shortens_delay() -> None:
    clock = Clock()
    b = Backoff(clock, initial=4.0, maximum=8.0, jitter=0.5, random=lambda: 1.0)
    b.failed("x")
    assert b.delay == 2.0
    b.failed("x")
    assert b.delay == 4.0
    status = b.status()
    assert json.loads(json.dumps(status)) == status
    assert status["in_backoff"] is True and status["consecutive_failures"] == 2


def test_backoff_single_probe_after_expiry() -> None:
    clock = Clock()
    b = Backoff(clock, random=lambda: 0.0)
    b.attempt()  # healthy: attempts are not probes
    assert not b.in_backoff()
    b.failed("x")
    clock.advance(1.0)
    assert not b.in_backoff()
    b.attempt()  # the probe goes out; others keep failing fast until it reports
    assert b.in_backoff()
    b.release()  # e.g. the caller cancelled the probe
    assert not b.in_backoff()
    b.attempt()
    clock.advance(60.0)  # a probe that never reports must not block forever
    assert not b.in_backoff()


def test_backoff_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(Clock(), initial=0)
    with pytest.raises(ValueError):
        Backoff(Clock(), initial=2, maximum=1)
    with pytest.raises(ValueError):
        Backoff(Clock(), jitter=1.0)


# -- a small programmable upstream ----------------------------------------------------------------

Handler = Callable[[Request], bytes | object]


@dataclass
class Seen:
    """What the server saw of one request."""

    path: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """A real HTTP server; ``handler`` renders every request (may return NOT_DONE_YET)."""

    url: str = ""
    root: str = ""
    seen: list[Seen] = field(default_factory=list)
    handler: Handler = lambda request: b""


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        self.upstream = upstream

    def render_GET(self, request: Request) -> Any:
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.upstream.seen.append(Seen(request.path.decode(), headers))
        return self.upstream.handler(request)


async def _listen(factory: Any) -> Any:
    from twisted.internet import reactor

    return reactor.listenTCP(0, factory, interface="127.0.0.1")


@pytest_twisted.async_yield_fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    port = await _listen(Site(_Leaf(up)))
    up.root = f"http://127.0.0.1:{port.getHost().port}"
    up.url = up.root + "/simple/"
    yield up
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def other_host() -> AsyncIterator[Upstream]:
    """A second server: a different origin (another port) than ``upstream``."""
    up = Upstream()
    port = await _listen(Site(_Leaf(up)))
    up.root = f"http://127.0.0.1:{port.getHost().port}"
    up.url = up.root + "/"
    yield up
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def make_client() -> AsyncIterator[Callable[..., UpstreamClient]]:
    from twisted.internet import reactor

    clients: list[UpstreamClient] = []

    def make(base_url: str, **kw: Any) -> UpstreamClient:
        # The fake upstreams listen on loopback, which the address policy refuses by default.
        client = UpstreamClient(base_url, reactor=reactor, **{"allow_private": True, **kw})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def _json_response(request: Request, files: list[dict[str, Any]], name: str = "foo-bar") -> bytes:
    request.setHeader(b"Content-Type", JSON_TYPE.encode())
    request.setHeader(b"ETag", b'"v1"')
    request.setHeader(b"X-PyPI-Last-Serial", b"4711")
    return json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": files}).encode()


# -- project pages --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_page(upstream: Upstream, make_client: Callable[..., UpstreamClient]) -> None:
    files: list[dict[str, Any]] = [
        {
            "filename": "foo_bar-1.0-py3-none-any.whl",
            "url": "../../files/foo_bar-1.0-py3-none-any.whl",
            "hashes": {"sha256": H1},
            "core-metadata": {"sha256": H1},
            "size": 3,
        },
        {"filename": "unrelated-1.0.tar.gz", "url": "/files/unrelated-1.0.tar.gz", "hashes": {}},
    ]
    upstream.handler = lambda request: _json_response(request, files)
    client = make_client(upstream.url, user_agent="devpid-test/1")
    page = await client.get_project("Foo_Bar")
    assert page.name == "foo-bar"
    assert page.etag == '"v1"'
    assert page.upstream_serial == 4711
    assert page.not_modified is False
    assert [f.url for f in page.files] == [upstream.root + "/files/foo_bar-1.0-py3-none-any.whl"]
    assert page.files[0].core_metadata == {"sha256": H1}
    (seen,) = upstream.seen
    assert seen.path == "/simple/foo-bar/"
    assert seen.headers["accept"] == ACCEPT
    assert seen.headers["user-agent"] == "devpid-test/1"
    assert "authorization" not in seen.headers
    assert "if-none-match" not in seen.headers
    assert client.status()["last_success"] is not None


@pytest_twisted.ensureDeferred
async def test_html_fallback_after_redirect(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    """A server that ignores Accept and redirects: links resolve against the final URL."""

    def handler(request: Request) -> bytes:
        if request.path == b"/simple/foo/":
            request.redirect(b"/elsewhere/Foo/")
            return b""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return (
            b"<html><head><title>Links for Foo</title></head><body>"
            b'<a href="foo-1.0.tar.gz#sha256=' + H1.encode() + b'" '
            b'data-requires-python="&gt;=3.9">foo-1.0.tar.gz</a>'
            b'<a href="/x/bar-1.0.tar.gz">bar</a></body></html>'
        )

    upstream.handler = handler
    client = make_client(upstream.url)
    page = await client.get_project("foo")
    assert page.name == "Foo"
    assert page.etag is None and page.upstream_serial is None
    (f,) = page.files
    assert f.url == upstream.root + "/elsewhere/Foo/foo-1.0.tar.gz"
    assert f.hashes == {"sha256": H1}
    assert f.requires_python == ">=3.9"
    assert [s.path for s in upstream.seen] == ["/simple/foo/", "/elsewhere/Foo/"]


@pytest_twisted.ensureDeferred
async def test_not_modified_with_etag(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def handler(request: Request) -> bytes:
        if request.getHeader(b"If-None-Match") == b'"v1"':
            request.setResponseCode(304)
            request.setHeader(b"X-PyPI-Last-Serial", b"12")
            return b""
        return _json_response(request, [])

    upstream.handler = handler
    client = make_client(upstream.url)
    first = await client.get_project("foo-bar")
    assert first.etag == '"v1"' and not first.not_modified
    page = await client.get_project("foo-bar", etag=first.etag)
    assert page.not_modified is True
    assert page.files == []
    assert page.etag == '"v1"'
    assert page.upstream_serial == 12
    assert upstream.seen[1].headers["if-none-match"] == '"v1"'


@pytest_twisted.ensureDeferred
async def test_404_is_not_found_and_a_successful_contact(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def handler(request: Request) -> bytes:
        request.setResponseCode(404)
        return b"not here" * 100

    upstream.handler = handler
    client = make_client(upstream.url)
    with pytest.raises(ProjectNotFound):
        await client.get_project("nope")
    with pytest.raises(ProjectNotFound):
        await client.get_project("nope")  # the drained connection is reusable
    status = client.status()
    assert status["in_backoff"] is False
    assert status["consecutive_failures"] == 0
    assert status["last_success"] is not None
    assert len(upstream.seen) == 2


@pytest_twisted.ensureDeferred
async def test_500_then_backoff_then_retry(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def fail(request: Request) -> bytes:
        request.setResponseCode(500)
        return b"oops"

    upstream.handler = fail
    clock = Clock()
    clock.advance(1_700_000_000)
    client = make_client(upstream.url, backoff=Backoff(clock, random=lambda: 0.0))
    with pytest.raises(UpstreamError) as info:
        await client.get_project("foo-bar")
    assert "HTTP 500" in info.value.message
    assert upstream.url + "foo-bar/" in info.value.message
    assert client.status()["in_backoff"] is True
    assert len(upstream.seen) == 1

    upstream.handler = lambda request: _json_response(request, [])
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await client.get_project("foo-bar")
    assert time.monotonic() - started < 0.1
    assert "in backoff until" in info.value.message
    assert len(upstream.seen) == 1  # the upstream was not contacted
    with pytest.raises(UpstreamError):
        await client.get_project_list()
    assert len(upstream.seen) == 1

    clock.advance(1.0)
    page = await client.get_project("foo-bar")
    assert page.name == "foo-bar"
    assert len(upstream.seen) == 2
    status = client.status()
    assert status["in_backoff"] is False
    assert status["consecutive_failures"] == 0
    assert (
        status["last_error"] == f"upstream {upstream.url}foo-bar/: HTTP 500 Internal Server Error"
    )
    assert status["url"] == upstream.url


@pytest_twisted.ensureDeferred
async def test_garbage_page_is_upstream_error(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def handler(request: Request) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE.encode())
        return b"{broken"

    upstream.handler = handler
    client = make_client(upstream.url)
    with pytest.raises(UpstreamError) as info:
        await client.get_project("foo")
    assert "bad response" in info.value.message
    assert client.status()["consecutive_failures"] == 1


@pytest_twisted.ensureDeferred
async def test_server_that_never_answers_times_out(
    make_client: Callable[..., UpstreamClient],
) -> None:
    connections: list[Protocol] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            connections.append(self)

    port = await _listen(Factory.forProtocol(Silent))
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/simple/"
        client = make_client(url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            await client.get_project("foo")
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 1.5
        assert "timeout after 0.5 s" in info.value.message
        assert url + "foo/" in info.value.message
        assert connections  # it did connect; the deadline covered the silent server
        assert client.status()["in_backoff"] is True
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_body_that_stalls_times_out(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def handler(request: Request) -> object:
        request.setHeader(b"Content-Type", JSON_TYPE.encode())
        request.write(b'{"meta": {"api-version": "1.0"}, "files": [')
        return NOT_DONE_YET

    upstream.handler = handler
    client = make_client(upstream.url, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await client.get_project("foo")
    assert time.monotonic() - started < 1.5
    assert "timeout after 0.5 s" in info.value.message


@pytest_twisted.ensureDeferred
async def test_connection_refused(make_client: Callable[..., UpstreamClient]) -> None:
    port = await _listen(Factory.forProtocol(Protocol))
    number = port.getHost().port
    await port.stopListening()
    client = make_client(f"http://127.0.0.1:{number}/simple/")
    with pytest.raises(UpstreamError) as info:
        await client.get_project("foo")
    assert "connection refused" in info.value.message
    assert client.status()["last_error"] == info.value.message


@pytest_twisted.ensureDeferred
async def test_caller_cancellation_releases_probe(
    make_client: Callable[..., UpstreamClient],
) -> None:
    port = await _listen(Factory.forProtocol(Protocol))  # accepts, never answers
    try:
        clock = Clock()
        backoff = Backoff(clock, random=lambda: 0.0)
        backoff.failed("earlier failure")
        clock.advance(1.0)
        client = make_client(f"http://127.0.0.1:{port.getHost().port}/simple/", backoff=backoff)
        d = Deferred.fromCoroutine(client.get_project("foo"))
        assert backoff.in_backoff()  # the probe is out; others fail fast meanwhile
        d.cancel()
        with pytest.raises(Exception) as info:
            await d
        assert type(info.value).__name__ == "CancelledError"
        assert not backoff.in_backoff()
        assert backoff.consecutive_failures == 1  # no verdict recorded
    finally:
        await port.stopListening()


# -- credentials ----------------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest_twisted.ensureDeferred
async def test_credentials_only_sent_to_upstream_origin(
    upstream: Upstream, other_host: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    def handler(request: Request) -> bytes:
        if request.path == b"/files/moved-1.0.tar.gz":
            request.redirect(other_host.root.encode() + b"/moved-1.0.tar.gz")
            return b""
        if request.path.startswith(b"/files/"):
            return b"file bytes"
        return _json_response(request, [])

    upstream.handler = handler
    other_host.handler = lambda request: b"other bytes"
    base = upstream.url.replace("http://", "http://us%40er:p%3Ass@")
    client = make_client(base)
    assert client.base_url == upstream.url
    assert "us%40er" not in json.dumps(client.status())

    await client.get_project("foo-bar")
    assert upstream.seen[-1].headers["authorization"] == _basic("us@er", "p:ss")

    data = await client.get_bytes(upstream.root + "/files/a-1.0.tar.gz", 100)
    assert data == b"file bytes"
    assert upstream.seen[-1].headers["authorization"] == _basic("us@er", "p:ss")

    response = await client.open_file(other_host.root + "/b-1.0.tar.gz")
    assert await treq.content(response) == b"other bytes"
    assert "authorization" not in other_host.seen[-1].headers

    # Credentials embedded in a file URL are never sent as such.
    data = await client.get_bytes(other_host.root.replace("//", "//x:y@") + "/c-1.0.zip", 100)
    assert data == b"other bytes"
    assert "authorization" not in other_host.seen[-1].headers

    # A redirect from the upstream to another origin drops the Authorization header.
    response = await client.open_file(upstream.root + "/files/moved-1.0.tar.gz")
    assert await treq.content(response) == b"other bytes"
    assert upstream.seen[-1].headers["authorization"] == _basic("us@er", "p:ss")
    assert other_host.seen[-1].path == "/moved-1.0.tar.gz"
    assert "authorization" not in other_host.seen[-1].headers


# -- files and the project list ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_open_file_and_get_bytes(
    upstream: Upstream, make_client: Callable[..., UpstreamClient]
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    def handler(request: Request) -> bytes:
        if request.path == b"/files/big-1.0.tar.gz":
            return payload
        if request.path == b"/files/broken-1.0.tar.gz":
            request.setResponseCode(503)
            return b"later"
        request.setResponseCode(404)
        return b"no"

    upstream.handler = handler
    client = make_client(upstream.url)
    response = await client.open_file(upstream.root + "/files/big-1.0.tar.gz")
    assert response.code == 200
    assert await treq.content(response) == payload

    with pytest.raises(FileNotFoundUpstream):
        await client.open_file(upstream.root + "/files/missing-1.0.tar.gz")
    with pytest.raises(FileNotFoundUpstream):
        await client.get_bytes(upstream.root + "/files/x.whl.metadata", 100)
    with pytest.raises(UpstreamError) as info:
        await client.open_file(upstream.root + "/files/broken-1.0.tar.gz")
    assert "HTTP 503" in info.value.message
    with pytest.raises(UpstreamError) as info:
        await client.get_bytes(upstream.root + "/files/big-1.0.tar.gz", 1000)
    assert "larger than 1000" in info.value.message
    with pytest.raises(UpstreamError):
        await client.open_file("file:///etc/passwd")
    assert client.status()["in_backoff"] is False  # HTTP errors for files are no outage


@pytest_twisted.ensureDeferred
async def test_project_list(upstream: Upstream, make_client: Callable[..., UpstreamClient]) -> None:
    names = [f"Name_{i}" for i in range(2000)]

    def handler(request: Request) -> bytes:
        assert request.path == b"/simple/"
        if request.getHeader(b"If-None-Match") == b'"L"':
            request.setResponseCode(304)
            return b""
        request.setHeader(b"ETag", b'"L"')
        request.setHeader(b"Content-Type", b"text/html")
        return "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in names).encode()

    upstream.handler = handler
    client = make_client(upstream.url)
    got, etag = await client.get_project_list()
    assert got == names
    assert etag == '"L"'
    assert await client.get_project_list(etag) == (None, '"L"')
