"""The hot read paths: cached simple pages and stored files, without routing or coroutines.

``GET /USER/INDEX/+simple/PROJECT/`` is what pip and uv ask most. When the page cache holds a
rendering whose validity token still matches (no serial it depends on changed, every mirror
it drew from is fresh), the root resource answers from here directly; anything else —
a miss, a stale mirror, a query string, another URL — goes through the full Klein route.
"""

from __future__ import annotations

from typing import Any

from devpid.domain import keys
from devpid.links import project_token
from devpid.memo import CommitClearedDict
from devpid.mirror.policy import file_refusal
from devpid.store.base import Store
from devpid.web.app import header
from devpid.web.errors import HTTPError
from devpid.web.files import blob_etag, content_type_for, file_cache_control, serve_blob
from devpid.web.negotiate import choose_simple_format
from devpid.web.simple import _send

PREFIX = "../../../../"
MAX_KNOWN_PATHS = 50_000
_formats: dict[str | None, str] = {}


def _format(accept: str | None) -> str:
    fmt = _formats.get(accept)
    if fmt is None:
        fmt = choose_simple_format(accept, None)
        if len(_formats) < 256:
            _formats[accept] = fmt
    return fmt


def try_cached_page(server: Any, request: Any, segments: list[bytes]) -> bytes | None:
    """The cached page for this request, or None to take the full route."""
    if (
        len(segments) != 5
        or segments[2] != b"+simple"
        or segments[4] != b""
        or request.method not in (b"GET", b"HEAD")
        or b"?" in request.uri
    ):
        return None
    stage = f"{segments[0].decode()}/{segments[1].decode()}"
    project = segments[3].decode()
    fmt = _format(header(request, b"accept"))
    hit = server.page_cache.entries.get((stage, project, fmt, PREFIX))
    if hit is None:
        return None
    token, etag, body, mirrors = hit
    if project_token(server, stage, project) != token:
        return None
    if mirrors:
        mirror = server.mirror
        for name, config in mirrors:
            if not mirror.is_fresh(name, config, project):
                return None
    return _send(request, fmt, etag, body)


def _stored_blob(server: Any, request: Any, segments: list[bytes]) -> tuple[str, str] | None:
    """(sha256, file name) of the stored file a plain ``+f`` GET asks for, or None.

    None means "not simple": a query string, a JSON request, an unknown or deleted path, a
    mirror file not cached yet, a file without core metadata. The full route answers those.
    """
    if (
        len(segments) < 5
        or segments[2] != b"+f"
        or request.method not in (b"GET", b"HEAD")
        or b"?" in request.uri
    ):
        return None
    accept = header(request, b"accept")
    if accept and "application/json" in accept:
        return None
    path = b"/".join(segments).decode()
    known = server.stored_paths
    hit = known.get(path)
    if hit is not None:
        return hit
    metadata = False
    found = server.store.lookup_path(path)
    if found is None and path.endswith(".metadata"):
        found = server.store.lookup_path(path[: -len(".metadata")])
        metadata = True
    if found is None or not found[0].startswith(keys.FILES):
        return None
    value = server.store.get(found[0])
    if not isinstance(value, dict):
        return None
    sha = value.get("metadata_sha256") if metadata else value.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        return None
    # A cached mirror file its release cooldown holds back: the full route says why (403).
    # Files only ever age in, and a config change empties ``known``, so a hit stays valid.
    parts = keys.parse(found[0])
    if file_refusal(server, parts.stage, parts.project, found[1],
                    value.get("upload_time")):
        return None
    hit = (sha, found[1] + ".metadata" if metadata else found[1])
    if len(known) >= MAX_KNOWN_PATHS:
        known.clear()
    known[path] = hit
    return hit


def stored_paths(store: Store) -> CommitClearedDict[str, tuple[str, str]]:
    """URL path -> (sha256, file name) of stored files, emptied by any change to a file record
    (an upload, a delete, a mirror file cached) or an index config, in this process or another
    (--workers)."""
    return CommitClearedDict(store, (keys.FILES, keys.INDEXES))


def try_stored_file(server: Any, request: Any, segments: list[bytes]) -> Any:
    """A stored file (upload or cached mirror file) sent straight from its blob, or None."""
    blob = _stored_blob(server, request, segments)
    if blob is None:
        return None
    try:
        result = serve_blob(server, request, *blob)
    except HTTPError:
        return None  # e.g. the blob is missing: the full route explains it
    if isinstance(result, bytes):
        return result
    return result.render(request)


def try_file_check(server: Any, request: Any, segments: list[bytes]) -> bytes | None:
    """nginx's question (``auth_request``, see nginx/devpid-nginx.conf.in): may it send this
    ``+f`` file from the blob store itself, and which blob is it?

    The answer is always an empty 200 (nginx's auth_request turns anything else into its own
    error page). With ``X-Devpid-Blob`` (the blob's path below ``+blobs``), its type and ETag,
    nginx sends the file and may reuse the answer for its page-cache seconds; without it, the
    answer is not to be reused and nginx passes the request on to devpid's full route, which
    gives the real answer (404, 410, JSON, a mirror download, ...). For an index not everyone
    may read, devpid.readacl has checked the client's credentials (nginx passes them) before
    this runs, answered 401/403 (which auth_request passes on) and forbidden reuse.
    """
    if not request.requestHeaders.hasHeader(b"x-devpid-check"):
        return None
    request.setHeader(b"Content-Length", b"0")
    blob = _stored_blob(server, request, segments)
    if blob is None:
        request.setHeader(b"X-Accel-Expires", b"0")
        return b""
    sha, filename = blob
    cache = server.mirror_cache
    if cache is not None:
        cache.touch(sha)  # nginx sends it: still a hit for the mirror cache
    request.setHeader(b"X-Devpid-Blob", ("/" + server.blobs.relpath(sha)).encode())
    request.setHeader(b"X-Devpid-Type", content_type_for(filename).encode())
    request.setHeader(b"ETag", blob_etag(sha))
    request.setHeader(b"X-Devpid-Cache-Control", file_cache_control(request))
    return b""
