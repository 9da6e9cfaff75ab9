"""Serving stored files: ``/USER/INDEX/+f/...`` (releases, PEP 658 metadata, doc zips) and
``/USER/INDEX/PROJECT/VERSION/+doc/...`` (pages read out of the docs zip).

Files are streamed from their blob by a producer (with single-range support), so memory use
does not grow with file size. Behind the generated nginx site, devpid only checks the request
and answers with ``X-Accel-Redirect``; nginx then sends the bytes from disk.
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
import zipfile
from email.utils import formatdate
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import NoRangeStaticProducer
from zope.interface import implementer

from devpid.domain import keys, paths
from devpid.mirror.policy import file_refusal
from devpid.web.app import DevpidServer, app, header, json_response
from devpid.web.errors import HTTPError, forbidden, not_found
from devpid.web.fastchannel import tcp_unqueued
from devpid.web.negotiate import wants_json_api

IMMUTABLE = b"max-age=365000000, immutable, public"
# Files of an index not everyone may read (devpid/readacl.py): browsers may keep them,
# shared caches may not.
IMMUTABLE_PRIVATE = b"max-age=365000000, immutable, private"


def file_cache_control(request: Any) -> bytes:
    return IMMUTABLE_PRIVATE if getattr(request, "devpid_private", False) else IMMUTABLE
# Files up to this size are read whole and sent with the headers (no producer, no sendfile).
SMALL_FILE = 64 * 1024


# Types a browser renders as an active document (scripts on our origin): never sent for a
# stored file; only doc pages, served under a sandboxing CSP, may have them.
_ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/x-javascript", "text/xsl",
})
DOC_CSP = b"sandbox allow-scripts allow-forms allow-popups"
SMALL_DOC_MEMBER = 256 * 1024


def content_type_for(filename: str) -> str:
    """The Content-Type of a stored file (``+f``): HTML, SVG, XML or JS as text/plain."""
    guessed = doc_type_for(filename)
    return "text/plain; charset=utf-8" if guessed in _ACTIVE_TYPES else guessed


def doc_type_for(filename: str) -> str:
    """The Content-Type by file name (doc pages keep text/html, under DOC_CSP)."""
    if filename.endswith(".whl"):
        return "application/octet-stream"
    if filename.endswith(".metadata"):
        return "application/octet-stream"
    guessed, encoding = mimetypes.guess_type(filename)
    if encoding == "gzip":
        return "application/x-tar" if filename.endswith(".tar.gz") else "application/gzip"
    return guessed or "application/octet-stream"


def _http_date(timestamp: float) -> bytes:
    return formatdate(timestamp, usegmt=True).encode()


def blob_etag(sha256: str) -> bytes:
    """A stored file's ETag: its content hash (the same from devpid and from nginx)."""
    return f'"{sha256[:32]}"'.encode()


def serve_blob(
    server: DevpidServer, request: Any, sha256: str, filename: str, *, mtime: float | None = None
) -> Any:
    """Send a blob: X-Accel-Redirect behind nginx, else a (range-capable) producer."""
    etag = blob_etag(sha256)
    cache = server.mirror_cache
    if cache is not None:
        cache.touch(sha256)  # a mirror cache hit, and its least-recently-used order
    accel = header(request, b"x-devpid-accel")
    # Only a printable path: no CR, LF or NUL can reach the X-Accel-Redirect header line.
    if accel and accel.startswith("/") and accel.isprintable():
        # nginx sends the file (and its Last-Modified): no need to touch the disk here.
        _file_headers(request, filename, etag)
        if _not_modified(request, etag):
            return b""
        request.setHeader(b"X-Accel-Redirect", (accel + server.blobs.relpath(sha256)).encode())
        request.setHeader(b"Content-Length", b"0")
        return b""
    small = None if mtime else small_blobs.get(sha256)
    # One open, then fstat: what is sent is what was measured, even if renamed meanwhile.
    # A small blob seen before needs no disk at all (blobs never change).
    f: Any = None if small is not None else _open_blob(server, sha256)
    try:
        if small is not None:
            data, last_modified = small
            size = len(data)
        else:
            stat = os.fstat(f.fileno())
            data, size = None, stat.st_size
            last_modified = _http_date(mtime or stat.st_mtime)
        _file_headers(request, filename, etag)
        request.setHeader(b"Last-Modified", last_modified)
        request.setHeader(b"Accept-Ranges", b"bytes")
        if _not_modified(request, etag):
            return b""
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", str(size).encode())
            return b""
        ranged = request.requestHeaders.hasHeader(b"range")
        if data is not None and not ranged:
            return data
        if f is None:  # a range of a cached small blob
            f = _open_blob(server, sha256)
        if size <= SMALL_FILE and not ranged:
            # Metadata files and small wheels: one read, sent with the headers, no producer.
            data = f.read(SMALL_FILE + 1)
            if len(data) == size:
                if not mtime:
                    small_blobs.put(sha256, data, last_modified)
                return data
            f.seek(0)
        resource, f = _ProducerResource(f, size), None
        return resource
    finally:
        if f is not None:
            f.close()


def _open_blob(server: DevpidServer, sha256: str) -> Any:
    try:
        return open(server.blobs.path(sha256), "rb")  # the caller closes it
    except FileNotFoundError:
        raise not_found("no such file") from None


class SmallBlobCache:
    """The bytes of recently sent small blobs (PEP 658 metadata, small wheels), by sha256.

    A blob's content is its name, so an entry can never be stale; whether a URL still leads
    to it is decided before (a deleted file never reaches this). Bounded in total bytes.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: dict[str, tuple[bytes, bytes]] = {}

    def get(self, sha256: str) -> tuple[bytes, bytes] | None:
        return self.entries.get(sha256)

    def put(self, sha256: str, data: bytes, last_modified: bytes) -> None:
        if sha256 in self.entries or len(data) > self.max_bytes:
            return
        while self.entries and self.size + len(data) > self.max_bytes:
            oldest = next(iter(self.entries))
            self.size -= len(self.entries.pop(oldest)[0])
        self.entries[sha256] = (data, last_modified)
        self.size += len(data)


small_blobs = SmallBlobCache()


def _file_headers(request: Any, filename: str, etag: bytes) -> None:
    request.setHeader(b"Content-Type", content_type_for(filename).encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"ETag", etag)
    request.setHeader(b"Cache-Control", file_cache_control(request))


def _not_modified(request: Any, etag: bytes) -> bool:
    inm = header(request, b"if-none-match")
    if inm and etag.decode() in [t.strip() for t in inm.split(",")]:
        request.setResponseCode(304)
        return True
    return False


@implementer(IPushProducer)
class FileSender:
    """Streams (part of) an open file as a push producer, with sendfile where possible.

    twisted.web's static producers are pull producers, which HTTP/1.1 drives through a
    Cooperator on timers; this one writes until the transport says "pause" and resumes when
    its buffer drains. The headers go first: corked in the socket (``send_head``, the fast
    front door's requests) or with a first chunk the ordinary way (twisted.web's); after
    that, on a plain TCP connection, the body goes out with ``os.sendfile`` (no copy through
    Python). When the socket is full it asks the transport to call it back once the socket is
    writable again, instead of queueing bytes in Twisted's buffer.
    """

    FIRST_CHUNK = 16 * 1024
    CHUNK = 256 * 1024
    SENDFILE_MAX = 4 * 1024 * 1024

    def __init__(self, request: Any, f: Any, offset: int, length: int) -> None:
        self.request = request
        self.file = f
        self.offset = offset
        self.remaining = length
        self.paused = False
        self.done = False
        self.sending = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._send()

    def _transport(self) -> tcp.Connection | None:
        """The TCP connection, when sendfile can be used on it now (headers out, nothing
        queued)."""
        if not self.request.startedWriting:
            return None
        return tcp_unqueued(getattr(self.request.channel, "transport", None))

    def _wait_writable(self, transport: tcp.Connection) -> None:
        """Be resumed by the transport (via the HTTP channel) once its socket can take more."""
        self.paused = True
        transport.producerPaused = True
        transport.startWriting()

    def _send(self) -> None:
        if self.sending:
            return
        self.sending = True
        try:
            while not self.paused and not self.done:
                if self.remaining <= 0:
                    self._finish()
                    return
                transport = self._transport()
                if transport is not None:
                    want = min(self.remaining, self.SENDFILE_MAX)
                    try:
                        sent = os.sendfile(transport.fileno(), self.file.fileno(), self.offset,
                                           want)
                    except BlockingIOError:
                        self._wait_writable(transport)
                        return
                    except OSError:  # anything unusual: the plain path below
                        sent = -1
                    if sent > 0:
                        self.offset += sent
                        self.remaining -= sent
                        self.request.sentLength += sent
                        if sent < want and self.remaining > 0:  # the socket is full
                            self._wait_writable(transport)
                            return
                        continue
                    if sent == 0:  # the file shrank under us: end the response short
                        self._finish()
                        return
                first = not self.request.startedWriting
                send_head = getattr(self.request, "send_head", None) if first else None
                if send_head is not None and send_head():
                    continue  # headers are in the socket, corked: the body follows by sendfile
                size = min(self.FIRST_CHUNK if first else self.CHUNK, self.remaining)
                data = os.pread(self.file.fileno(), size, self.offset)
                if not data:  # the file shrank under us: end the response short
                    self._finish()
                    return
                self.offset += len(data)
                self.remaining -= len(data)
                self.request.write(data)
                transport = getattr(self.request.channel, "transport", None)
                if (
                    first
                    and self.remaining > 0
                    and isinstance(transport, tcp.Connection)
                    and tcp_unqueued(transport) is None
                ):
                    # Headers and first chunk are queued: send the rest by sendfile once
                    # they are out, rather than queueing more behind them.
                    self._wait_writable(transport)
                    return
        finally:
            self.sending = False

    def _finish(self) -> None:
        self.done = True
        self.file.close()
        self.request.unregisterProducer()
        self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._send()

    def stopProducing(self) -> None:
        if not self.done:
            self.done = True
            self.file.close()


class _ProducerResource(Resource):
    """Streams one file with a registered producer (Klein renders returned resources)."""

    isLeaf = True

    def __init__(self, f: Any, size: int) -> None:
        super().__init__()
        self.file = f  # open; the producer closes it
        self.size = size

    def render(self, request: Any) -> Any:
        size = self.size
        f = self.file
        rng = _parse_range(header(request, b"range"), size)
        if rng is None:
            request.setHeader(b"Content-Length", str(size).encode())
            producer = FileSender(request, f, 0, size)
        else:
            start, end = rng
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", f"bytes {start}-{end}/{size}".encode())
            request.setHeader(b"Content-Length", str(end - start + 1).encode())
            producer = FileSender(request, f, start, end - start + 1)
        producer.start()
        return NOT_DONE_YET


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` range (the only kind installers send); anything else: whole file."""
    if not value or not value.startswith("bytes=") or "," in value or size == 0:
        return None
    spec = value[6:].strip()
    first, _, last = spec.partition("-")
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                return None
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def file_meta(value: dict[str, Any]) -> dict[str, Any]:
    out = {
        "hash_spec": f"sha256={value['sha256']}",
        "hashes": {"sha256": value["sha256"]},
        "size": value.get("size"),
        "version": value.get("version"),
        "upload_time": value.get("upload_time"),
    }
    if value.get("url"):
        out["url"] = value["url"]
    return out


@app.route("/<user>/<index>/+e/<path:rest>", methods=["GET", "HEAD"])
async def get_external_file(
    server: DevpidServer, request: Any, user: str, index: str, rest: str
) -> Any:
    """A mirror's file whose upstream link came without a hash (devpi's ``+e`` layout)."""
    return await serve_file_path(server, request, f"{user}/{index}", paths.EXTERNAL_AREA, rest)


@app.route("/<user>/<index>/+f/<path:rest>", methods=["GET", "HEAD"])
async def get_file(server: DevpidServer, request: Any, user: str, index: str, rest: str) -> Any:
    return await serve_file_path(server, request, f"{user}/{index}", paths.FILES_AREA, rest)


async def serve_file_path(server: DevpidServer, request: Any, stage: str, area: str,
                          rest: str) -> Any:
    metadata = False
    try:
        path = paths.in_area(stage, area, rest)
    except paths.UnsafePath:
        path = ""  # never a stored path: answered as any other unknown file
    found = server.store.lookup_path(path) if path else None
    if found is None and path.endswith(".metadata"):
        found = server.store.lookup_path(path[: -len(".metadata")])
        metadata = True
    if found is None:
        if server.index_config(stage) is None:
            raise not_found(f"The stage {stage} could not be found.")
        raise not_found("no such file")
    key, filename = found
    kind = keys.kind(key)
    # A mirror page can be huge: its file is served (and its entry decoded) by the mirror.
    value = server.store.get(key) if kind != "mirror" else None
    stored = value if kind == "file" and isinstance(value, dict) else {}
    refused = file_refusal(server, stage, keys.parse(key).project, filename,
                           stored.get("upload_time"))
    if refused:
        raise forbidden(refused)
    if kind == "mirror":
        mirror = server.mirror
        cache = server.mirror_cache
        if cache is not None and not metadata and request.method == b"GET":
            cache.miss(stage)
        return await mirror.serve_file(request, key, filename, metadata=metadata)
    if not isinstance(value, dict):
        raise HTTPError(410, "file existed, deleted in later serial")
    if wants_json_api(header(request, b"accept")):
        return json_response(request, result=file_meta(value), type="releasefilemeta")
    if metadata:
        sha = value.get("metadata_sha256")
        if not sha:
            raise not_found("no core metadata for this file")
        return serve_blob(server, request, sha, filename + ".metadata")
    return serve_blob(server, request, value["sha256"], filename)


@app.route("/<user>/<index>/<project>/<version>/+doc/", methods=["GET", "HEAD"])
@app.route("/<user>/<index>/<project>/<version>/+doc/<path:rest>", methods=["GET", "HEAD"])
async def get_doc(
    server: DevpidServer,
    request: Any,
    user: str,
    index: str,
    project: str,
    version: str,
    rest: str = "",
) -> Any:
    """A page out of an uploaded docs zip, read from the archive (never unpacked to disk)."""
    stage = f"{user}/{index}"
    value = server.store.get(keys.doc(stage, project, version))
    if not isinstance(value, dict):
        raise not_found(f"no documentation for {project} {version} in {stage}")
    member = posixpath.normpath("/" + rest).lstrip("/")
    if member in ("", "."):
        member = "index.html"
    blob = server.blobs.path(value["sha256"])

    def open_member() -> bytes | _ZipMember | None:
        zf: zipfile.ZipFile | None = zipfile.ZipFile(blob)
        try:
            assert zf is not None
            names = set(zf.namelist())
            for candidate in (member, member.rstrip("/") + "/index.html"):
                if candidate in names:
                    info = zf.getinfo(candidate)
                    if info.file_size <= SMALL_DOC_MEMBER:
                        return zf.read(info)
                    opened = _ZipMember(zf, zf.open(info), info.file_size)
                    zf = None
                    return opened
            return None
        finally:
            if zf is not None:
                zf.close()

    try:
        found = await server.in_thread(open_member)
    except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
        raise not_found("documentation archive is unreadable") from None
    if found is None:
        raise not_found(f"{rest or 'index.html'} is not in the documentation")
    # Scripts in docs run sandboxed in an opaque origin: never as the index (its cookies,
    # its Basic credentials, its JSON API on the same origin).
    request.setHeader(b"Content-Type", doc_type_for(member).encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Security-Policy", DOC_CSP)
    if isinstance(found, bytes):
        return found
    return _StreamedMember(found)


class _ZipMember:
    """An open doc-zip member (and its archive) with the read/close a static producer uses."""

    def __init__(self, zf: zipfile.ZipFile, fp: Any, size: int) -> None:
        self.zf, self.fp, self.size = zf, fp, size

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.fp.read(size)
        return data

    def close(self) -> None:
        self.fp.close()
        self.zf.close()


class _StreamedMember(Resource):
    """A big doc member sent chunk by chunk as the client reads (a pull producer): a slow
    reader holds one chunk, not the whole inflated member."""

    isLeaf = True

    def __init__(self, member: _ZipMember) -> None:
        super().__init__()
        self.member = member

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"Content-Length", str(self.member.size).encode())
        if request.method == b"HEAD":
            self.member.close()
            return b""
        NoRangeStaticProducer(request, self.member).start()
        return NOT_DONE_YET

    render_HEAD = render_GET
