"""A small real HTTP server that plays "PyPI" (simple API + files) for tests.

The mirror under test talks HTTP to its upstream, so the most faithful stand-in
is an actual socket on 127.0.0.1 with PEP 503/691/658/700 behaviour and
switchable faults (down, hanging, 500s, slow, corrupt, truncated bodies, per-file
stalls and trickles, and project pages that are 200 but no valid page).
Standard library only, so it can also run standalone for benchmarks::

    python -m tests.support.fakepypi --port 0 --dir DIR --publish NAME==VER

prints its simple-index URL as the first stdout line and serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.utils
import hashlib
import html
import json
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Self
from urllib.parse import quote, unquote, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from . import pkgbuild

__all__ = ["FILE_FAULTS", "HTML_TYPE", "JSON_TYPE", "PAGE_FAULTS", "FakePyPI", "FileFault", "Mode",
           "PageFault"]

Mode = Literal["ok", "hang", "error", "slow"]
_MODES: frozenset[str] = frozenset({"ok", "hang", "error", "slow"})

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"
_CHUNK = 256 * 1024
_POLL = 0.05  # seconds; granularity for hang/slow loops to notice stop()/mode changes
_INVERT = bytes(b ^ 0xFF for b in range(256))
FileFault = Literal["corrupt", "truncate", "stall", "trickle"]
# 200 answers for a project page that are not a valid page of it:
PageFault = Literal["maintenance", "garbage", "cut", "cut-length", "badjson", "nofiles"]
PAGE_FAULTS: tuple[PageFault, ...] = (
    "maintenance", "garbage", "cut", "cut-length", "badjson", "nofiles")
FILE_FAULTS: tuple[FileFault, ...] = ("corrupt", "truncate", "stall", "trickle")
_MAINTENANCE = (
    b"<!DOCTYPE html>\n<html><head><title>Down for maintenance</title></head>\n"
    b"<body><h1>We will be back soon</h1><p>Please try again later.</p></body></html>\n"
)


@dataclass
class _File:
    """One distribution file held by the fake index."""

    filename: str
    project: str  # normalized
    display_name: str
    version: str
    path: Path
    sha256: str
    size: int
    upload_time: datetime
    requires_python: str | None
    yanked: str | bool = False
    metadata: bytes | None = None  # PEP 658 core metadata (wheels only)
    metadata_sha256: str | None = None
    upload_time_known: bool = True  # False: the JSON page gives no upload-time (old uploads)

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


@dataclass
class _Rendered:
    serial: int
    body: bytes
    etag: str


@dataclass
class _Generation:
    """Per-start() state, so handlers of an old server never see a new stop event."""

    stop: threading.Event = field(default_factory=threading.Event)
    conns: set[socket.socket] = field(default_factory=set)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _http_date(dt: datetime) -> str:
    return email.utils.format_datetime(dt.astimezone(UTC), usegmt=True)


def _parse_accept(header: str | None) -> list[tuple[str, float]]:
    """Media ranges with q-values, in header order."""
    if not header:
        return []
    out: list[tuple[str, float]] = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        mtype = pieces[0].lower()
        if not mtype:
            continue
        q = 1.0
        for param in pieces[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        out.append((mtype, q))
    return out


def negotiate(accept: str | None) -> tuple[Literal["json", "html"], str]:
    """Pick JSON or HTML by q-value (ties: first listed wins; nothing → HTML).

    Returns the format and the Content-Type to answer with.
    """
    ranges = _parse_accept(accept)
    json_names = {JSON_TYPE, "application/vnd.pypi.simple.latest+json"}
    html_names = {HTML_TYPE, "application/vnd.pypi.simple.latest+html", "text/html"}
    best: tuple[float, int, str, str] | None = None  # (q, -index, fmt, content-type)
    for index, (mtype, q) in enumerate(ranges):
        if q <= 0:
            continue
        if mtype in json_names:
            cand = (q, -index, "json", JSON_TYPE)
        elif mtype in html_names:
            ctype = HTML_TYPE if mtype != "text/html" else "text/html; charset=utf-8"
            cand = (q, -index, "html", ctype)
        elif mtype in ("*/*", "text/*", "application/*"):
            cand = (q, -index, "html", "text/html; charset=utf-8")
        else:
            continue
        if best is None or cand[:2] > best[:2]:
            best = cand
    if best is None or best[2] == "html":
        return "html", best[3] if best else "text/html; charset=utf-8"
    return "json", JSON_TYPE


def _read_metadata(path: Path, filename: str) -> bytes | None:
    """METADATA of a wheel or PKG-INFO of an sdist, if it can be found."""
    try:
        if filename.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for n in zf.namelist():
                    top, _, rest = n.partition("/")
                    if top.endswith(".dist-info") and rest == "METADATA":
                        return zf.read(n)
        elif filename.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for n in zf.namelist():
                    if n.count("/") == 1 and n.endswith("/PKG-INFO"):
                        return zf.read(n)
        elif filename.endswith((".tar.gz", ".tgz")):
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                        fobj = tf.extractfile(member)
                        return fobj.read() if fobj else None
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of connections (uv asks for 15
    # pages at once) overflows it and the dropped SYNs are retried a second later.
    request_queue_size = 128
    fake: FakePyPI
    gen: _Generation

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client hang-ups and our own stop() are expected; keep test output clean."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a client's delayed ACK
    # holds the body ~40 ms on reused connections. Real indexes do not behave like that.
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return "FakePyPI/1.0"

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.gen.conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.fake._lock:
            self.server.gen.conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _abort(self) -> None:
        """Drop the connection without (further) answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _dispatch(self, head: bool) -> None:
        fake = self.server.fake
        gen = self.server.gen
        fake._log(self.command, self.path, {k: v for k, v in self.headers.items()})
        while fake.mode == "hang":
            if gen.stop.wait(_POLL):
                self._abort()
                return
        if gen.stop.is_set():
            self._abort()
            return
        try:
            if fake.mode == "error":
                self._send_bytes(500, b"Internal Server Error (injected)\n", "text/plain", head)
                return
            self._route(head)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # -- responses --------------------------------------------------------

    def _common_headers(self, etag: str | None) -> None:
        self.send_header("X-PyPI-Last-Serial", str(self.server.fake.serial))
        if etag:
            self.send_header("ETag", etag)

    def _not_modified(self, etag: str) -> bool:
        inm = self.headers.get("If-None-Match")
        if not inm:
            return False
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        if "*" in tags or etag in tags:
            self.send_response(304)
            self._common_headers(etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        ctype: str,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"' if status == 200 else None
        self._send_cached(status, body, ctype, head, etag, extra)

    def _send_cached(
        self,
        status: int,
        body: bytes,
        ctype: str,
        head: bool,
        etag: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        if etag and status == 200 and self._not_modified(etag):
            return
        self.send_response(status)
        self._common_headers(etag)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _redirect(self, path: str) -> None:
        self.send_response(301)
        self._common_headers(None)
        self.send_header("Location", self.server.fake.base_url + path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _not_found(self, head: bool) -> None:
        self._send_bytes(404, b"Not Found\n", "text/plain", head)

    # -- routing ----------------------------------------------------------

    def _route(self, head: bool) -> None:
        fake = self.server.fake
        path = unquote(urlsplit(self.path).path)
        if path == "/simple":
            self._redirect("/simple/")
            return
        if path == "/simple/":
            if fake.list_fault is not None:
                self._send_bad_page(None, fake.list_fault, head)
                return
            fmt, ctype = self._format()
            rendered = fake._render_index(fmt)
            self._send_cached(200, rendered.body, ctype, head, rendered.etag, {"Vary": "Accept"})
            return
        m = re.fullmatch(r"/simple/([^/]+)/?", path)
        if m:
            name = m.group(1)
            norm = canonicalize_name(name)
            if name != norm or not path.endswith("/"):
                self._redirect(f"/simple/{quote(norm)}/")
                return
            fmt, ctype = self._format()
            with fake._lock:
                page_fault = fake._page_faults.get(norm)
            if page_fault is not None:
                self._send_bad_page(norm, page_fault, head)
                return
            body = fake._render_project(norm, fmt)
            if body is None:
                self._not_found(head)
                return
            self._send_bytes(200, body, ctype, head, {"Vary": "Accept"})
            return
        m = re.fullmatch(r"/files/([^/]+)", path)
        if m:
            self._serve_file(m.group(1), head)
            return
        self._not_found(head)

    def _send_bad_page(self, project: str | None, fault: PageFault, head: bool) -> None:
        """A 200 that is not a (whole) page of ``project`` (None: of the project list)."""
        fake = self.server.fake
        html_type = "text/html; charset=utf-8"
        if fault == "maintenance":
            self._send_bytes(200, _MAINTENANCE, html_type, head)
        elif fault == "garbage":
            noise = hashlib.sha256(str(project).encode()).digest() * 128
            self._send_bytes(200, b"\x00" + noise, html_type, head)
        elif fault == "badjson":
            self._send_bytes(200, b'{"meta": {"api-version": "1.1"}, "name": "x", "fil', JSON_TYPE,
                             head)
        elif fault == "nofiles":
            body = json.dumps({"meta": {"api-version": API_VERSION}, "message": "busy"})
            self._send_bytes(200, body.encode(), JSON_TYPE, head)
        else:  # "cut" / "cut-length": the HTML page up to its first file link, then close
            if project is None:
                page = fake._render_index("html").body
                cut = len(page) // 2
            else:
                page = fake._render_project(project, "html") or _MAINTENANCE
                cut = page.find(b"</a>") + len(b"</a>") if b"</a>" in page else len(page) // 2
            self.send_response(200)
            self._common_headers(None)
            self.send_header("Content-Type", html_type)
            if fault == "cut-length":
                self.send_header("Content-Length", str(len(page)))
            self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(page[:cut])
                self.wfile.flush()
            self._abort()

    def _format(self) -> tuple[Literal["json", "html"], str]:
        if self.server.fake.html_only:
            return "html", "text/html; charset=utf-8"
        return negotiate(self.headers.get("Accept"))

    def _serve_file(self, filename: str, head: bool) -> None:
        fake = self.server.fake
        is_meta = filename.endswith(".metadata")
        base = filename.removesuffix(".metadata") if is_meta else filename
        with fake._lock:
            f = fake._files.get(base)
            fault = fake._faults.get(filename)
        if f is None or (is_meta and f.metadata is None):
            self._not_found(head)
            return
        if is_meta:
            assert f.metadata is not None and f.metadata_sha256 is not None
            size, etag = len(f.metadata), f'"{f.metadata_sha256}"'
            source: BinaryIO | None = None
        else:
            size, etag = f.size, f.etag
            try:
                source = f.path.open("rb")
            except OSError:
                self._not_found(head)
                return
        try:
            if self._not_modified(etag):
                return
            self.send_response(200)
            self._common_headers(etag)
            ctype = "application/octet-stream" if not is_meta else "text/plain; charset=utf-8"
            self.send_header("Content-Type", ctype)
            framing = fake.file_framing
            if framing == "length":
                self.send_header("Content-Length", str(size))
            elif framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
            else:  # the end of the body is the end of the connection
                self.send_header("Connection", "close")
                self.close_connection = True
            self.send_header("Last-Modified", _http_date(f.upload_time))
            self.send_header("Accept-Ranges", "none")
            self.end_headers()
            if head:
                return
            limit = size // 2 if fault in ("truncate", "stall") else size
            chunks = self._chunks(source, f.metadata if is_meta else None, limit)
            for chunk in chunks:
                if fault == "corrupt":
                    chunk = chunk.translate(_INVERT)
                if framing == "chunked":
                    self.wfile.write(b"%x\r\n" % len(chunk))
                self._write_body(chunk, slow=fault == "trickle")
                if framing == "chunked":
                    self.wfile.write(b"\r\n")
            if framing == "chunked" and fault not in ("truncate", "stall"):
                self.wfile.write(b"0\r\n\r\n")
            if framing == "close":
                self.wfile.flush()
                self._abort()
            if fault == "stall":  # keep the connection open, send nothing more
                self.wfile.flush()
                gen = self.server.gen
                while fake._faults.get(filename) == "stall" and not gen.stop.wait(_POLL):
                    pass
                self._abort()
            if fault == "truncate":
                self.wfile.flush()
                self._abort()
        finally:
            if source is not None:
                source.close()

    @staticmethod
    def _chunks(source: BinaryIO | None, data: bytes | None, limit: int) -> Iterator[bytes]:
        if data is not None:
            yield data[:limit]
            return
        assert source is not None
        remaining = limit
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def _write_body(self, chunk: bytes, slow: bool = False) -> None:
        """Write, trickling at ``slow_rate`` bytes/s while in "slow" mode (or ``slow``)."""
        fake = self.server.fake
        gen = self.server.gen
        view = memoryview(chunk)
        while view:
            if gen.stop.is_set():
                raise ConnectionAbortedError("server stopped")
            if fake.mode != "slow" and not slow:
                self.wfile.write(view)
                return
            rate = max(1, fake.slow_rate)
            step = max(1, int(rate * _POLL))
            self.wfile.write(view[:step])
            view = view[step:]
            gen.stop.wait(step / rate)


class FakePyPI:
    """A threaded fake upstream index on 127.0.0.1; see module docstring.

    All public methods are thread-safe and may be called while serving.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int = 0,
        html_only: bool = False,
        extra_project_names: int = 0,
        absolute_urls: bool = False,
        slow_rate: int = 64 * 1024,
        file_framing: Literal["length", "chunked", "close"] = "length",
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakepypi-")
            directory = Path(self._tmp.name)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.html_only = html_only
        self.absolute_urls = absolute_urls
        self.slow_rate = slow_rate
        # How a file body's end is marked: Content-Length, chunked, or closing the connection.
        self.file_framing = file_framing
        self.extra_project_names = extra_project_names
        self.serial = 0
        self._port = port
        self._mode: Mode = "ok"
        self._lock = threading.RLock()
        self._files: dict[str, _File] = {}
        self._faults: dict[str, FileFault] = {}
        self._page_faults: dict[str, PageFault] = {}
        self.list_fault: PageFault | None = None  # the same faults for the /simple/ list
        self._requests: list[tuple[str, str, dict[str, str]]] = []
        self._index_cache: dict[str, _Rendered] = {}
        self._extra_cache: dict[str, bytes] = {}
        self._synthetic: dict[str, tuple[int, int]] = {}  # project -> (files, generation)
        self._synthetic_cache: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self, port: int | None = None) -> Self:
        """Bind and serve; with no port, reuse the previous one (0 the first time)."""
        if self._httpd is not None:
            raise RuntimeError("FakePyPI already running")
        if port is not None:
            self._port = port
        httpd = _Server(("127.0.0.1", self._port), _Handler)
        httpd.fake = self
        httpd.gen = _Generation()
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL},
            name=f"FakePyPI:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and all open connections: clients get "connection refused"."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.gen.stop.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(httpd.gen.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def close(self) -> None:
        """Stop and remove the temporary directory if we created it."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The simple index root, ``http://127.0.0.1:PORT/simple/``."""
        return f"{self.base_url}/simple/"

    def file_url(self, filename: str) -> str:
        return f"{self.base_url}/files/{quote(filename)}"

    # -- content --------------------------------------------------------------

    def add(
        self,
        source: Path | bytes,
        filename: str | None = None,
        *,
        requires_python: str | None = None,
        upload_time: datetime | None = None,
        no_upload_time: bool = False,
    ) -> Path:
        """Publish an existing file (path or bytes); name/version come from the file name.

        Requires-Python and PEP 658 metadata are read from the archive unless
        ``requires_python`` is given.  Re-adding a file name replaces it.  With
        ``no_upload_time`` the JSON page omits its PEP 700 upload-time.
        """
        if filename is None:
            if isinstance(source, bytes):
                raise ValueError("filename is required when adding bytes")
            filename = Path(source).name
        if "/" in filename or filename.endswith(".metadata"):
            raise ValueError(f"bad filename {filename!r}")
        try:
            if filename.endswith(".whl"):
                pname, ver, _, _ = parse_wheel_filename(filename)
            else:
                pname, ver = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename) as exc:
            raise ValueError(f"not a distribution file name: {filename!r}") from exc
        dest = self.directory / filename
        if isinstance(source, bytes):
            dest.write_bytes(source)
        elif Path(source).resolve() != dest.resolve():
            shutil.copyfile(source, dest)
        digest = hashlib.sha256()
        with dest.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        meta = _read_metadata(dest, filename)
        display = str(pname)
        if meta is not None:
            msg = email.parser.BytesHeaderParser().parsebytes(meta)
            display = msg.get("Name", display)
            if requires_python is None:
                requires_python = msg.get("Requires-Python")
        is_wheel = filename.endswith(".whl")
        entry = _File(
            filename=filename,
            project=canonicalize_name(pname),
            display_name=display,
            version=str(ver),
            path=dest,
            sha256=digest.hexdigest(),
            size=dest.stat().st_size,
            upload_time=upload_time or datetime.now(UTC),
            requires_python=requires_python,
            metadata=meta if is_wheel else None,
            metadata_sha256=hashlib.sha256(meta).hexdigest() if (is_wheel and meta) else None,
            upload_time_known=not no_upload_time,
        )
        with self._lock:
            self._files[filename] = entry
            self._bump()
        return dest

    def publish(
        self,
        name: str,
        version: str,
        kind: Literal["wheel", "sdist"] = "wheel",
        **kw: Any,
    ) -> Path:
        """Build a distribution with :mod:`pkgbuild` and add it (kwargs go to the builder)."""
        upload_time = kw.pop("upload_time", None)
        no_upload_time = bool(kw.pop("no_upload_time", False))
        if kind == "wheel":
            path = pkgbuild.make_wheel(self.directory, name, version, **kw)
        elif kind == "sdist":
            path = pkgbuild.make_sdist(self.directory, name, version, **kw)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        return self.add(path, upload_time=upload_time, no_upload_time=no_upload_time)

    def yank(self, filename: str, reason: str | None = None) -> None:
        """Mark a file yanked (PEP 592); an empty/None reason means plain ``true``."""
        with self._lock:
            self._files[filename].yanked = reason or True
            self._bump()

    def unyank(self, filename: str) -> None:
        with self._lock:
            self._files[filename].yanked = False
            self._bump()

    def remove(self, filename: str) -> None:
        """Delete a file; a project with no files left disappears (404)."""
        with self._lock:
            entry = self._files.pop(filename)
            self._bump()
        entry.path.unlink(missing_ok=True)

    def add_synthetic(self, project: str, count: int) -> None:
        """Serve a generated page of ``count`` wheel links for ``project`` (no real files):
        the "50,000 files" project. Calling it again changes the page (new hashes)."""
        norm = canonicalize_name(project)
        with self._lock:
            generation = self._synthetic.get(norm, (0, 0))[1] + 1
            self._synthetic[norm] = (count, generation)
            self._bump()

    def _render_synthetic(self, project: str, fmt: str) -> bytes | None:
        with self._lock:
            spec = self._synthetic.get(project)
            if spec is None:
                return None
            count, generation = spec
            cached = self._synthetic_cache.get((project, fmt))
            if cached is not None and cached[0] == generation:
                return cached[1]
        stem = project.replace("-", "_")
        entries = []
        for i in range(count):
            filename = f"{stem}-{i // 100}.{i % 100}-py3-none-any.whl"
            sha = hashlib.sha256(f"{generation}:{filename}".encode()).hexdigest()
            entries.append((filename, sha))
        if fmt == "json":
            body = json.dumps({
                "meta": {"api-version": API_VERSION},
                "name": project,
                "files": [
                    {"filename": fn, "url": self._href(fn), "hashes": {"sha256": sha},
                     "requires-python": ">=3.8", "yanked": False, "size": 12345,
                     "upload-time": "2024-01-01T00:00:00.000000Z",
                     "core-metadata": {"sha256": sha}}
                    for fn, sha in entries
                ],
            }).encode()
        else:
            body = ("<!DOCTYPE html>\n<html><body>\n" + "".join(
                f'<a href="{html.escape(self._href(fn))}#sha256={sha}" '
                f'data-requires-python="&gt;=3.8">{fn}</a><br />\n' for fn, sha in entries
            ) + "</body></html>\n").encode()
        with self._lock:
            self._synthetic_cache[(project, fmt)] = (generation, body)
        return body

    def files(self, project: str | None = None) -> list[str]:
        """File names held, optionally for one project."""
        norm = canonicalize_name(project) if project else None
        with self._lock:
            return sorted(f.filename for f in self._files.values() if norm in (None, f.project))

    def sha256(self, filename: str) -> str:
        with self._lock:
            return self._files[filename].sha256

    def _bump(self) -> None:
        self.serial += 1

    # -- faults ----------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}")
        self._mode = value

    def corrupt(self, filename: str) -> None:
        """Serve different bytes of the same length (hash mismatch) for this file."""
        with self._lock:
            self._faults[filename] = "corrupt"

    def truncate(self, filename: str) -> None:
        """Advertise the full Content-Length, send half, then drop the connection."""
        with self._lock:
            self._faults[filename] = "truncate"

    def stall(self, filename: str) -> None:
        """Send the headers and half the body, then nothing (connection kept open) until
        the fault is cleared or the server stops."""
        with self._lock:
            self._faults[filename] = "stall"

    def trickle(self, filename: str) -> None:
        """Send this file at ``slow_rate`` bytes/s."""
        with self._lock:
            self._faults[filename] = "trickle"

    def file_fault(self, filename: str, fault: FileFault) -> None:
        """One of FILE_FAULTS for this file (see corrupt, truncate, stall, trickle)."""
        if fault not in FILE_FAULTS:
            raise ValueError(f"fault must be one of {FILE_FAULTS}")
        with self._lock:
            self._faults[filename] = fault

    def page_fault(self, project: str, fault: PageFault) -> None:
        """Answer this project's page with a 200 that is not a valid page (PAGE_FAULTS):
        a maintenance page, garbage, HTML cut after the first link without (``cut``) or
        with (``cut-length``) a Content-Length, broken JSON, or JSON without ``files``."""
        if fault not in PAGE_FAULTS:
            raise ValueError(f"fault must be one of {PAGE_FAULTS}")
        with self._lock:
            self._page_faults[canonicalize_name(project)] = fault

    def claim(self, filename: str, sha256: str, metadata_sha256: str | None = None) -> None:
        """Advertise hashes the file does not have (a lying upstream); bytes stay the same."""
        with self._lock:
            entry = self._files[filename]
            entry.sha256 = sha256
            if metadata_sha256 is not None:
                entry.metadata_sha256 = metadata_sha256
            self._bump()

    def clear_faults(self) -> None:
        """Back to normal: mode "ok" and no per-file or per-page faults."""
        with self._lock:
            self._faults.clear()
            self._page_faults.clear()
            self.list_fault = None
        self.mode = "ok"

    # -- observability -------------------------------------------------------

    def _log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append((method, path, headers))

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """Snapshot of (method, path, headers) of every request received so far."""
        with self._lock:
            return list(self._requests)

    def count(self, path_prefix: str = "/") -> int:
        """Number of received requests whose path starts with ``path_prefix``."""
        with self._lock:
            return sum(1 for _, p, _ in self._requests if p.startswith(path_prefix))

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- rendering -------------------------------------------------------------

    def _project_names(self) -> dict[str, str]:
        """normalized → display name for real projects (caller holds the lock)."""
        names: dict[str, str] = {}
        for f in self._files.values():
            names.setdefault(f.project, f.display_name)
        return dict(sorted(names.items()))

    def _extra(self, fmt: str) -> bytes:
        """Rendered synthetic project entries; built once because N may be ~10⁶."""
        cached = self._extra_cache.get(fmt)
        if cached is None:
            n = self.extra_project_names
            names = [f"proj-{i:06d}" for i in range(1, n + 1)]
            if fmt == "json":
                cached = "".join(f',{{"name":"{nm}"}}' for nm in names).encode()
            else:
                cached = "".join(f'<a href="{nm}/">{nm}</a>\n' for nm in names).encode()
            self._extra_cache[fmt] = cached
        return cached

    def _render_index(self, fmt: Literal["json", "html"]) -> _Rendered:
        with self._lock:
            cached = self._index_cache.get(fmt)
            if cached is not None and cached.serial == self.serial:
                return cached
            serial = self.serial
            names = self._project_names()
            extra = self._extra(fmt)
            if fmt == "json":
                real = ",".join(
                    json.dumps({"name": d}, separators=(",", ":")) for d in names.values()
                ).encode()
                if not real:
                    extra = extra[1:]  # drop the leading comma
                body = (
                    b'{"meta":{"api-version":"'
                    + API_VERSION.encode()
                    + b'"},"projects":['
                    + real
                    + extra
                    + b"]}"
                )
            else:
                real = "".join(
                    f'<a href="{quote(n)}/">{html.escape(d)}</a>\n' for n, d in names.items()
                ).encode()
                body = (
                    b"<!DOCTYPE html>\n<html>\n<head>\n"
                    b'<meta name="pypi:repository-version" content="'
                    + API_VERSION.encode()
                    + b'">\n<title>Simple index</title>\n</head>\n<body>\n'
                    + real
                    + extra
                    + b"</body>\n</html>\n"
                )
            rendered = _Rendered(serial, body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
            self._index_cache[fmt] = rendered
            return rendered

    def _href(self, filename: str) -> str:
        if self.absolute_urls:
            return self.file_url(filename)
        return f"../../files/{quote(filename)}"

    def _render_project(self, project: str, fmt: Literal["json", "html"]) -> bytes | None:
        synthetic = self._render_synthetic(project, fmt)
        if synthetic is not None:
            return synthetic
        with self._lock:
            files = sorted(
                (f for f in self._files.values() if f.project == project),
                key=lambda f: f.filename,
            )
        if not files:
            return None
        if fmt == "json":
            versions: set[str] = {f.version for f in files}

            def vkey(v: str) -> tuple[int, Version | str]:
                try:
                    return (1, Version(v))
                except InvalidVersion:
                    return (0, v)

            doc = {
                "meta": {"api-version": API_VERSION},
                "name": project,
                "versions": sorted(versions, key=vkey),
                "files": [
                    {
                        "filename": f.filename,
                        "url": self._href(f.filename),
                        "hashes": {"sha256": f.sha256},
                        "requires-python": f.requires_python,
                        "yanked": f.yanked,
                        "size": f.size,
                        **({"upload-time": _iso(f.upload_time)} if f.upload_time_known else {}),
                        "core-metadata": (
                            {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
                        ),
                    }
                    for f in files
                ],
            }
            return json.dumps(doc).encode()
        lines = [
            "<!DOCTYPE html>",
            "<html>",
            "<head>",
            f'<meta name="pypi:repository-version" content="{API_VERSION}">',
            f"<title>Links for {html.escape(project)}</title>",
            "</head>",
            "<body>",
            f"<h1>Links for {html.escape(project)}</h1>",
        ]
        for f in files:
            attrs = f'href="{html.escape(self._href(f.filename))}#sha256={f.sha256}"'
            if f.requires_python:
                attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
            if f.yanked is not False:
                reason = "" if f.yanked is True else str(f.yanked)
                attrs += f' data-yanked="{html.escape(reason)}"'
            if f.metadata_sha256:
                attrs += f' data-core-metadata="sha256={f.metadata_sha256}"'
            lines.append(f"<a {attrs}>{html.escape(f.filename)}</a><br />")
        lines += ["</body>", "</html>", ""]
        return "\n".join(lines).encode()


def main(argv: list[str] | None = None) -> int:
    """Standalone server for benchmarks: print the URL, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fakepypi")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="NAME==VER",
        help="publish a generated wheel (repeatable)",
    )
    parser.add_argument(
        "--publish-sdist",
        action="append",
        default=[],
        metavar="NAME==VER",
        help="publish a generated sdist (repeatable)",
    )
    parser.add_argument(
        "--extra-bytes", type=int, default=0, help="payload size added to each --publish wheel"
    )
    parser.add_argument(
        "--extra-projects",
        type=int,
        default=0,
        help="synthetic names added to the /simple/ listing",
    )
    parser.add_argument("--html-only", action="store_true")
    parser.add_argument("--absolute-urls", action="store_true")
    args = parser.parse_args(argv)

    fake = FakePyPI(
        args.dir,
        port=args.port,
        html_only=args.html_only,
        extra_project_names=args.extra_projects,
        absolute_urls=args.absolute_urls,
    )
    for spec in args.publish + args.publish_sdist:
        if "==" not in spec:
            parser.error(f"expected NAME==VER, got {spec!r}")
    for spec in args.publish:
        name, _, ver = spec.partition("==")
        fake.publish(name, ver, "wheel", extra_bytes=args.extra_bytes)
    for spec in args.publish_sdist:
        name, _, ver = spec.partition("==")
        fake.publish(name, ver, "sdist")
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    fake.start()
    fake._render_index("html")  # warm the caches so the first benchmark request is typical
    fake._render_index("json")
    print(fake.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
