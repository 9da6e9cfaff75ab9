"""Hostile and malformed requests get a 4xx with a JSON message, never a 500."""

from __future__ import annotations

import contextlib
import itertools
import socket

import pytest
import requests

from tests.conftest import Devpid

PATHS = [
    "/", "/+api", "/+login", "/+status", "/%ff%fe", "/..", "/../../etc/passwd",
    "/root/..%2f..%2fetc", "/root/pypi/+f/../../../etc/passwd", "/root/pypi/+f/%2e%2e/x",
    "/root/pypi/+simple/%C3%A9t%C3%A9/", "/root/pypi/+simple/a%00b/", "/nouser/noindex/+simple/",
    "/root/pypi/x/1.0/+doc/../../../../etc/passwd", "/root/pypi/+simple/p/refresh",
    "/root/pypi/pypi/x/json", "/root/nope/+api", "/a/b/c/d/e/f/g/h", "/root/pypi/+f/",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "PUSH", "HEAD", "OPTIONS", "BREW"]
BODIES: list[bytes | None] = [None, b"", b"{", b"[1, 2", b'"just a string"', b"null",
                              b'{"password": 5}', b'["volatile"]', b"\xff\xfe\x00"]


@pytest.fixture(scope="module")
def server_url(devpid_server: Devpid) -> str:
    return devpid_server.url


@pytest.mark.parametrize("method", METHODS)
def test_no_server_errors(server_url: str, method: str) -> None:
    failures = []
    for path, body in itertools.product(PATHS, BODIES):
        r = requests.request(method, server_url + path, data=body, allow_redirects=False,
                             headers={"Accept": "application/json"}, timeout=20,
                             auth=("root", "wrong") if body == b"null" else None)
        if r.status_code >= 500 and r.status_code not in (502, 503, 504):
            failures.append((method, path, body, r.status_code, r.text[:200]))
        elif r.status_code >= 400 and method != "HEAD":
            assert r.headers["Content-Type"] == "application/json", (path, r.text[:200])
            assert "message" in r.json()
    assert not failures


def test_garbage_uploads(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    user = alice[0]
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={}).ok
    url = f"{devpid_server.url}/{user}/dev/"
    cases = [
        ("multipart/form-data", b"garbage"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nbroken"),
        ("multipart/form-data; boundary=xyz", b"--xyz--\r\n"),
        ("multipart/form-data; boundary=", b""),
        ("application/x-www-form-urlencoded", b":action=file_upload&name=x"),
        ("application/json", b"{}"),
        ("text/plain", b"hello"),
    ]
    for ctype, body in cases:
        r = requests.post(url, data=body, headers={"Content-Type": ctype}, auth=alice)
        assert 400 <= r.status_code < 500, (ctype, r.status_code, r.text[:200])


def test_raw_protocol_garbage(devpid_server: Devpid) -> None:
    """Broken HTTP framing is refused by the protocol layer and the server keeps serving."""
    host, port = "127.0.0.1", int(devpid_server.url.rsplit(":", 1)[1])
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(raw)
            with contextlib.suppress(OSError):
                s.recv(1024)
    assert requests.get(devpid_server.url + "/+api").ok
