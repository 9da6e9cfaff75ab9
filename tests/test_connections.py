"""Connections against the real daemon over raw sockets: request heads and idle keep-alive
connections time out, a flood of idle or slow connections cannot starve normal requests (nor
exhaust the daemon's file descriptors), and busy slots beyond --max-connections get a 503."""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devpid.web.connections import FD_RESERVE, FDS_PER_CONNECTION, ConnectionLimit, fd_budget
from tests.conftest import Devpid, init_serverdir
from tests.support.pkgbuild import make_wheel
from tests.test_fastchannel import read_response
from tests.test_private_index import make_index, make_user, upload_ok

BOUND = 10.0  # generous: a liveness bound, not a speed claim
FLOOD = 2000


def daemon(base: Path, *args: str, nofile: int | None = None) -> Devpid:
    """A daemon started (optionally) under a soft open-file limit like a stock system's."""
    serverdir = base / "server"
    init_serverdir(serverdir, None, root_pypi=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    try:
        return Devpid(serverdir, args=list(args)).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def quick(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Devpid]:
    """A daemon with short timeouts (1 s for a head, 2 s idle), alone or with a worker."""
    base = tmp_path_factory.mktemp("conn-quick")
    server = daemon(base, "--header-timeout", "1", "--idle-timeout", "2",
                    "--workers", str(request.param))
    yield server
    server.stop()


def connect(server: Devpid) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
    sock.settimeout(BOUND)
    return sock


def wait_closed(sock: socket.socket, within: float = 3 * BOUND) -> bytes:
    """What the server sent before it closed the connection (fails if it stays open)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"server kept the connection open; got {data[:200]!r}") from None
    return data


def test_silent_connection_gets_408_and_is_closed(quick: Devpid) -> None:
    with connect(quick) as sock:
        data = wait_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"request head not received in time" in data


def test_trickled_head_is_closed_at_the_header_deadline(quick: Devpid) -> None:
    """A byte every 0.2 s would keep an idle timer alive forever; the head deadline holds."""
    head = b"GET /+api HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with connect(quick) as sock:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > BOUND:
                break
        assert closed or wait_closed(sock, BOUND).startswith(b"HTTP/1.1 408 ")


def test_idle_keepalive_connection_is_closed(quick: Devpid, tmp_path: Path) -> None:
    """After answers from twisted.web and from the fast front door, an idle keep-alive
    connection is closed by the idle timeout; while it is used, it stays open."""
    auth = make_user(quick)
    stage = make_index(quick, auth, "dev")
    wheel = make_wheel(tmp_path, "idlepkg", "1.0")
    upload_ok(quick, auth, stage, wheel, "idlepkg", "1.0")
    page = f"GET /{stage}/+simple/idlepkg/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with connect(quick) as sock:
        buf = bytearray()
        for request in (b"GET /+api HTTP/1.1\r\nHost: x\r\n\r\n", page, page, page):
            sock.sendall(request)
            assert read_response(sock, buf).status == 200
            time.sleep(0.5)  # well inside both timeouts: still open
        assert wait_closed(sock) == b""


def _flood(server: Devpid, count: int) -> list[socket.socket]:
    """``count`` connections, half silent, half with a head they never finish."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
        socks.append(s)
        if i % 2:
            sel.register(s, selectors.EVENT_WRITE)
    deadline = time.monotonic() + BOUND
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            with contextlib.suppress(OSError):
                key.fileobj.send(b"GET /+api HTTP/1.1\r\nHost: slow\r\n")  # type: ignore[union-attr]
            sel.unregister(key.fileobj)
    sel.close()
    return socks


def _all_closed_by_server(socks: list[socket.socket], within: float) -> int:
    """How many of ``socks`` the server has not closed after ``within`` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + within
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
    left = len(sel.get_map())
    sel.close()
    return left


@pytest.fixture
def more_fds() -> Iterator[None]:
    """Room for the flood's sockets in this (test) process, bounded."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, FLOOD + 1024) if hard != resource.RLIM_INFINITY else FLOOD + 1024
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("args", [
    [],  # defaults: the daemon raises its own fd limit to fit them
    ["--max-connections", "300", "--header-timeout", "3"],  # idle ones are evicted
    ["--max-connections", "300", "--header-timeout", "3", "--workers", "2"],  # per process
], ids=["defaults", "limit-300", "limit-300-workers-2"])
def test_flood_of_idle_connections_does_not_starve_requests(
        args: list[str], tmp_path: Path, more_fds: None) -> None:
    """2,000 idle and half-sent connections against a daemon started with a stock soft
    limit of 1,024 open files: ordinary requests are still answered, and the server closes
    the flood's connections itself."""
    server = daemon(tmp_path, *args, nofile=1024)
    socks: list[socket.socket] = []
    try:
        socks = _flood(server, FLOOD)
        for _ in range(5):
            r = requests.get(server.url + "/+api", timeout=BOUND)
            assert r.status_code == 200
        status = requests.get(server.url + "/+status", headers={"Accept": "application/json"},
                              timeout=BOUND).json()["result"]["connections"]
        metrics = requests.get(server.url + "/+metrics", timeout=BOUND).text
        assert f"devpid_connections_limit {status['limit']}" in metrics
        if "--workers" in args:  # the flood is shared by two processes of 300 each
            assert status["limit"] == 300
            assert _all_closed_by_server(socks, 3 * BOUND) == 0
        elif args:
            assert status["limit"] == 300 and status["open"] <= 300 and status["evicted"] > 0
            assert _all_closed_by_server(socks, 3 * BOUND) == 0
        else:
            assert status["limit"] == 4096 and status["open"] >= FLOOD // 2
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_busy_connections_over_the_limit_get_503(tmp_path: Path) -> None:
    """When every slot holds a request in progress (a body still arriving), a new
    connection is answered 503 with a JSON message; a freed slot serves again."""
    server = daemon(tmp_path, "--max-connections", "2")
    busy = []
    try:
        for _ in range(2):
            s = connect(server)
            s.sendall(b"POST /+login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
            busy.append(s)
        time.sleep(0.5)  # let the server read both heads
        with connect(server) as s:
            s.sendall(b"GET /+api HTTP/1.1\r\nHost: x\r\n\r\n")
            data = wait_closed(s)
        assert data.startswith(b"HTTP/1.1 503 "), data
        assert b"too many open connections" in data and b"Retry-After: 1" in data
        busy.pop().close()
        deadline = time.monotonic() + BOUND
        while True:
            r = requests.get(server.url + "/+api", timeout=BOUND)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200
    finally:
        for s in busy:
            s.close()
        server.stop()


def test_fd_budget() -> None:
    """The soft limit is raised as far as the hard one allows; the limit fits what is left."""
    inf = resource.RLIM_INFINITY
    assert fd_budget(100, 1024, 4096) == (1024, 100)
    need = 4096 * FDS_PER_CONNECTION + FD_RESERVE
    assert fd_budget(4096, 1024, 1 << 20) == (need, 4096)
    assert fd_budget(4096, 1024, inf) == (need, 4096)
    assert fd_budget(4096, 1024, 1024) == (1024, (1024 - FD_RESERVE) // FDS_PER_CONNECTION)
    assert fd_budget(4096, inf, inf) == (inf, 4096)


def test_systemd_unit_raises_the_open_file_limit(tmp_path: Path) -> None:
    """The generated unit gives the default --max-connections its descriptors."""
    import configparser

    from devpid.genconfig import render
    from devpid.web.app import Settings
    from tests.test_genconfig import _options

    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(render(_options(tmp_path))["devpid.service"])
    need = Settings(serverdir=tmp_path).max_connections * FDS_PER_CONNECTION + FD_RESERVE
    assert int(parser["Service"]["LimitNOFILE"]) >= need


class _Transport:
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Channel:
    def __init__(self, since: float | None) -> None:
        self.devpid_waiting_since = since
        self.transport = _Transport()


def test_at_the_limit_one_scan_drops_the_longest_waiting_batch() -> None:
    limit = ConnectionLimit(500)
    busy = [_Channel(None) for _ in range(300)]
    waiting = [_Channel(float(t)) for t in range(200, 0, -1)]  # the last waited longest
    for channel in busy + waiting:
        limit.opened(channel)
    assert limit.make_room()
    dropped = [c for c in busy + waiting if c.transport.aborted]
    assert dropped == waiting[-5:]  # 1% of the limit, oldest first, never a busy one
    assert len(limit.open) == 495 and limit.evicted == 5
    for _ in range(5):  # room again without scanning
        limit.opened(_Channel(None))
    for channel in waiting[:-5]:
        channel.devpid_waiting_since = None  # every connection has a request in progress
    assert not limit.make_room() and limit.refused == 1  # all busy: 503
