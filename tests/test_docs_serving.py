"""Doc zips: pages run sandboxed (never as the index's origin) and big members stream.

Issue 19, Medium 5 and 6: a doc page's script ran with the server's origin (and the
browser's Basic credentials), and a 60 MB member of a tiny zip was held whole in memory
for every slow reader.
"""

from __future__ import annotations

import hashlib
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import requests

from devpid.web.files import content_type_for
from tests.conftest import Devpid
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import http_upload, make_index, make_user, upload_ok


def _upload_docs(server: Devpid, tmp_path: Path, members: dict[str, bytes]) -> str:
    auth = make_user(server)
    stage = make_index(server, auth, "docs")
    wheel = make_wheel(tmp_path / "w", "doc-pkg", "1.0")
    upload_ok(server, auth, stage, wheel, "doc-pkg", "1.0")
    path = tmp_path / "doc-pkg-1.0.doc.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    r = http_upload(server, auth, stage, path, name="doc-pkg", version="1.0",
                    action="doc_upload")
    assert r.status_code == 200, r.text
    return f"{server.url}/{stage}/doc-pkg/1.0/+doc/"


def test_doc_pages_are_sandboxed_away_from_the_index_origin(
    devpid_server: Devpid, tmp_path: Path
) -> None:
    base = _upload_docs(devpid_server, tmp_path, {
        "index.html": b"<script>fetch('/+api')</script>",
        "logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
    })
    for page, ctype in (("index.html", "text/html"), ("logo.svg", "image/svg+xml")):
        r = requests.get(base + page, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype)
        csp = [d.strip() for d in r.headers["Content-Security-Policy"].split(";")]
        sandbox = next(d.split() for d in csp if d.startswith("sandbox"))
        assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox, csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_active_types_outside_docs_are_plain_text() -> None:
    """Outside a docs tree (``+f`` files) nothing is served as HTML, SVG, XML or script."""
    for name in ("a.html", "a.htm", "a.svg", "a.xhtml", "a.xml", "a.js"):
        assert content_type_for(name) == "text/plain; charset=utf-8", name
    assert content_type_for("a-1.0.tar.gz") == "application/x-tar"
    assert content_type_for("a-1.0-py3-none-any.whl") == "application/octet-stream"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_big_doc_member_streams_to_slow_readers(start_devpid: Any, tmp_path: Path) -> None:
    server = start_devpid()
    size = 60 * 1024 * 1024
    big = b"\0" * size
    base = _upload_docs(server, tmp_path, {"index.html": b"hi", "big.html": big})
    del big
    assert server.proc is not None
    before = _rss_kib(server.proc.pid)
    port = server.port
    readers: list[socket.socket] = []
    try:
        path = base.split(str(port), 1)[1] + "big.html"
        for _ in range(4):  # slow readers: they read the headers, then nothing
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            readers.append(s)
        time.sleep(0.5)  # let the server write whatever it would buffer
        grown_mib = (_rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 100, f"the daemon grew by {grown_mib:.0f} MiB for 4 slow readers"
    finally:
        for s in readers:
            s.close()
    # a reader that reads gets every byte
    r = requests.get(base + "big.html", timeout=60)
    assert r.status_code == 200 and len(r.content) == size
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(b"\0" * size).hexdigest()
    assert requests.head(base + "big.html", timeout=10).headers["Content-Length"] == str(size)
