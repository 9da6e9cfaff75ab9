"""The fast front door (devpid/web/fastchannel.py) against a real daemon over raw sockets:
its answers match twisted.web's, and anything unusual on the wire still gets a right answer
in the right order."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.conftest import Devpid
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import make_index, simple_json, upload_ok

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def read_response(sock: socket.socket, buf: bytearray, *, head: bool = False) -> Response:
    """One HTTP/1.1 response off ``sock`` (Content-Length or chunked), leftovers in buf."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {bytes(buf)[:300]!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def need(n: int) -> bytes:
        while len(buf) < n:
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed mid-body"
            buf.extend(chunk)
        data = bytes(buf[:n])
        del buf[:n]
        return data

    if head or status in (204, 304):
        return Response(status, headers, b"")
    if "content-length" in headers:
        return Response(status, headers, need(int(headers["content-length"])))
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        line_end = buf.index(b"\r\n")
        size = int(bytes(buf[:line_end]), 16)
        del buf[: line_end + 2]
        body += need(size + 2)[:-2]
        if size == 0:
            return Response(status, headers, body)


def get(path: str, host: str, *, extra: str = "", version: str = "HTTP/1.1",
        method: str = "GET") -> bytes:
    return (f"{method} {path} {version}\r\nHost: {host}\r\nAccept: {SIMPLE_JSON}\r\n"
            f"{extra}\r\n").encode()


@pytest.fixture(scope="module")
def published(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An index with a small and a 6 MB wheel (more than a socket buffer holds), and their
    page and file paths."""
    from tests.test_private_index import make_user

    tmp = tmp_path_factory.mktemp("fastchannel")
    auth = make_user(devpid_server)
    stage = make_index(devpid_server, auth, "fast")
    small = make_wheel(tmp, "fast-pkg", "1.0")
    big = make_wheel(tmp, "fast-pkg", "2.0", extra_bytes=6_000_000)
    for wheel, version in ((small, "1.0"), (big, "2.0")):
        upload_ok(devpid_server, auth, stage, wheel, "fast-pkg", version)
    page = f"/{stage}/+simple/fast-pkg/"
    files = {f["filename"]: urlsplit(urljoin(devpid_server.url + page, f["url"])).path
             for f in simple_json(devpid_server, stage, "fast-pkg")["files"]}
    return {"page": page, "small": (files[small.name], small.read_bytes()),
            "big": (files[big.name], big.read_bytes()), "auth": auth, "stage": stage}


def connect(server: Devpid, *, small_window: bool = False) -> socket.socket:
    """A client socket; with ``small_window`` the server cannot send a big file at once,
    so the file streams on while later requests arrive."""
    sock = socket.socket()
    if small_window:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    return sock


def fast_count(server: Devpid) -> int:
    """Answers the fast front door gave (``/+status``; the session daemon is one process)."""
    count: int = requests.get(f"{server.url}/+status", headers={"Accept": "application/json"},
                              timeout=30).json()["result"]["fast-requests"]
    return count


def test_fast_answers_match_twisted_web(devpid_server: Devpid, published: dict[str, Any]) -> None:
    host = f"127.0.0.1:{devpid_server.port}"
    with connect(devpid_server) as sock:
        buf = bytearray()
        sock.sendall(get(published["page"], host))  # warm the page cache
        read_response(sock, buf)
        before = fast_count(devpid_server)
        sock.sendall(get(published["page"], host))
        fast = read_response(sock, buf)
        assert fast_count(devpid_server) == before + 1  # this one took the fast way
    with connect(devpid_server) as sock:  # HTTP/1.0 always takes twisted.web's way
        buf = bytearray()
        sock.sendall(get(published["page"], host, version="HTTP/1.0"))
        slow = read_response(sock, buf)
    assert fast_count(devpid_server) == before + 1
    assert fast.status == slow.status == 200
    assert fast.body == slow.body and fast.headers["content-length"] == str(len(fast.body))
    for name in ("content-type", "etag", "vary", "cache-control", "x-devpi-serial",
                 "x-devpi-uuid", "x-devpi-api-version", "x-devpi-server-version"):
        assert fast.headers[name] == slow.headers[name], name
    assert "date" in fast.headers and "server" in fast.headers


def test_head_conditional_and_range(devpid_server: Devpid, published: dict[str, Any]) -> None:
    host = f"127.0.0.1:{devpid_server.port}"
    path, data = published["small"]
    with connect(devpid_server) as sock:
        buf = bytearray()
        sock.sendall(get(path, host, method="HEAD"))
        head = read_response(sock, buf, head=True)
        assert head.status == 200 and head.headers["content-length"] == str(len(data))
        sock.sendall(get(path, host))
        full = read_response(sock, buf)
        assert full.body == data
        sock.sendall(get(path, host, extra=f"If-None-Match: {full.headers['etag']}\r\n"))
        assert read_response(sock, buf).status == 304
        sock.sendall(get(path, host, extra="Range: bytes=2-9\r\n"))
        part = read_response(sock, buf)
        assert (part.status, part.body) == (206, data[2:10])
        sock.sendall(get(published["page"], host, method="HEAD"))
        page_head = read_response(sock, buf, head=True)
        assert int(page_head.headers["content-length"]) > 0
        sock.sendall(get(published["page"], host))  # the connection is still in step
        assert read_response(sock, buf).status == 200
        assert buf == b""


def test_pipelined_and_split_requests_keep_their_order(devpid_server: Devpid,
                                                       published: dict[str, Any]) -> None:
    host = f"127.0.0.1:{devpid_server.port}"
    big_path, big = published["big"]
    small_path, small = published["small"]
    with connect(devpid_server, small_window=True) as sock:
        buf = bytearray()
        # three requests in one write: twisted.web's pipelining, answered in order
        sock.sendall(get(small_path, host) + get(big_path, host) + get(published["page"], host))
        assert read_response(sock, buf).body == small
        assert read_response(sock, buf).body == big
        assert read_response(sock, buf).headers["content-type"] == SIMPLE_JSON
        # a big file streams (the client reads nothing yet) while the next request arrives
        sock.sendall(get(big_path, host))
        time.sleep(0.2)
        sock.sendall(get(small_path, host))
        assert hashlib.sha256(read_response(sock, buf).body).digest() == \
            hashlib.sha256(big).digest()
        assert read_response(sock, buf).body == small
        # a request split across two segments
        request = get(small_path, host)
        sock.sendall(request[:20])
        time.sleep(0.05)
        sock.sendall(request[20:])
        assert read_response(sock, buf).body == small
        assert buf == b""
    with connect(devpid_server) as sock:  # headers beyond twisted.web's limit: refused
        sock.sendall(get(small_path, host, extra="X-Big: " + "a" * 20000 + "\r\n"))
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200"), answer


def test_close_and_disconnects(devpid_server: Devpid, published: dict[str, Any]) -> None:
    host = f"127.0.0.1:{devpid_server.port}"
    small_path, small = published["small"]
    big_path, big = published["big"]
    with connect(devpid_server) as sock:
        buf = bytearray()
        sock.sendall(get(small_path, host, extra="Connection: close\r\n"))
        assert read_response(sock, buf).body == small
        assert sock.recv(10) == b""  # and the server closed it
    for _ in range(5):  # clients that leave in the middle of a big file
        with connect(devpid_server, small_window=True) as sock:
            sock.sendall(get(big_path, host))
            sock.recv(1000)
    assert requests.get(devpid_server.url + big_path, timeout=30).content == big


def test_fast_requests_are_logged(devpid_server: Devpid, published: dict[str, Any]) -> None:
    small_path, _ = published["small"]
    before = fast_count(devpid_server)
    requests.get(devpid_server.url + small_path + "?x=1", timeout=30)  # the slow way
    requests.get(devpid_server.url + small_path, timeout=30)
    assert fast_count(devpid_server) == before + 1
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline and len(lines) < 2:
        lines = [line for line in devpid_server.log().splitlines()
                 if "[devpid.access#info]" in line and small_path in line and " 200 " in line]
        time.sleep(0.2)
    assert len(lines) >= 2, devpid_server.log()[-1500:]


def test_a_storage_fault_is_a_json_error_not_a_dropped_connection(
        devpid_server: Devpid, tmp_path: Path) -> None:
    """A blob that cannot be read (here: a directory where the file should be) makes the
    fast path fail; the request falls back to the full route and gets its JSON 500, and the
    file is served again once the blob is back."""
    from tests.test_private_index import make_user

    auth = make_user(devpid_server)
    stage = make_index(devpid_server, auth, "fault")
    wheel = make_wheel(tmp_path, "fault-pkg", "1.0", extra_bytes=100_000)
    upload_ok(devpid_server, auth, stage, wheel, "fault-pkg", "1.0")
    entry = simple_json(devpid_server, stage, "fault-pkg")["files"][0]
    url = urljoin(f"{devpid_server.url}/{stage}/+simple/fault-pkg/", entry["url"])
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    blob = devpid_server.serverdir / "+blobs" / sha[0:2] / sha[2:4] / sha
    saved = tmp_path / "saved-blob"
    blob.rename(saved)
    blob.mkdir()
    try:
        broken = requests.get(url, timeout=30)
        assert broken.status_code == 500, broken.text
        assert broken.json()["message"]
    finally:
        blob.rmdir()
        saved.rename(blob)
    assert requests.get(url, timeout=30).content == wheel.read_bytes()


def status_until_close(sock: socket.socket) -> tuple[int, bytes]:
    """Status code and head of the one response the server sends before it closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[0]


# Requests twisted.web refuses (400): the fast front door must not answer them either
# (issue 19: one request grammar, RFC 9112), so each goes to twisted.web.
REFUSED_HEADS = {
    "bare-lf-hides-content-length": b"X-A: 1\nContent-Length: 5\r\n",
    "bare-cr-in-value": b"X-A: 1\rX-B: 2\r\n",
    "nul-in-value": b"X-A: 1\x002\r\n",
    "nul-in-name": b"X-\x00A: 1\r\n",
    "non-token-name": b"X(A): 1\r\n",
    "600-headers": b"".join(b"X-H%d: v\r\n" % i for i in range(600)),
}


@pytest.mark.parametrize("case", sorted(REFUSED_HEADS))
def test_the_fast_door_refuses_what_twisted_web_refuses(
        devpid_server: Devpid, published: dict[str, Any], case: str) -> None:
    path, _ = published["small"]  # a stored file: the fast door answers it at once
    head = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (path.encode(), devpid_server.port)
            + REFUSED_HEADS[case] + b"\r\n")
    assert len(head) < 16384  # (within twisted.web's head size: refused for its grammar)
    before = fast_count(devpid_server)
    with connect(devpid_server) as sock:
        sock.sendall(head)
        status, _ = status_until_close(sock)
    assert status == 400, case
    assert fast_count(devpid_server) == before  # twisted.web answered


def test_accel_with_a_bare_cr_adds_no_response_header(
        devpid_server: Devpid, published: dict[str, Any]) -> None:
    path, _ = published["small"]
    with connect(devpid_server) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Devpid-Accel: /b/\rX-Injected: 1\r\n\r\n"
                     % path.encode())
        status, head = status_until_close(sock)
    assert b"x-injected" not in head.lower()
    assert b"\r" not in head.replace(b"\r\n", b"")
    assert status == 400


def test_fast_response_headers_are_one_line_each() -> None:
    """A value with CR or LF (e.g. taken from a request) cannot add a header line."""
    from devpid.web.fastchannel import FastRequest

    request = FastRequest(None, b"GET", b"/", {})  # type: ignore[arg-type]
    request.setHeader(b"X-Accel-Redirect", b"/a\rX-Injected: 1\nX-Other: 2")
    head = request.head(0)
    assert head.count(b"\r\n") == head.count(b"\n") == head.count(b"\r")
    assert b"\r\nX-Injected" not in head and b"\r\nX-Other" not in head
