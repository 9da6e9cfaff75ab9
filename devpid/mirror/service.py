"""Mirror indexes: a self-updating, offline-capable cache of an upstream simple index.

Policy, per (mirror, project):

- a cached page younger than ``mirror_cache_expiry`` is served as is;
- an older one is served at once (after at most a short grace period) while one shared
  background fetch refreshes it; a hanging upstream never delays a cached page;
- a never-seen project waits for the fetch, bounded by the request timeout; if the upstream
  cannot be asked the answer is a 502 naming the upstream, never a "does not exist" 404;
- the upstream client backs off after failures and answers from the cache at once until the
  upstream is back; then updates resume by themselves;
- only a real change of the upstream page writes a new serial.

Big pages (a project with 50,000 files is a 20 MB page) are decoded, merged, compared and
encoded in a worker thread, one at a time (``PAGE_WORK``), never on the reactor, so cached
pages of other projects keep their latency; a page above ``--mirror-max-page-size`` is refused
as an upstream failure before it is parsed.

Files are downloaded on first request (see downloads.py) and recorded as ``file/`` keys.
In ``--offline-mode`` the upstream is never contacted and pages list only cached files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from devpid import __version__, memory
from devpid.domain import keys, paths
from devpid.links import Link, UpstreamUnavailable, version_key
from devpid.mirror.backoff import Backoff
from devpid.mirror.downloads import BodyToDownload, Download, DownloadFailed, TailProducer
from devpid.mirror.fetcher import (
    FileNotFoundUpstream,
    ProjectNotFound,
    UpstreamClient,
    UpstreamError,
)
from devpid.mirror.parse import UpstreamFile
from devpid.model.names import InvalidFilename, parse_dist_filename
from devpid.netpolicy import mirror_file_hosts
from devpid.store.sqlite import encode_value

log = Logger()

GRACE = 0.04  # seconds a request with a stale cached page waits for a fresh one
_NORMALIZE_RUNS = re.compile(r"[-_.]+")
_SAFE_NAMES = re.compile(r"[a-z0-9\n-]*")
_SAFE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
BIG_PAGE = 256 * 1024  # stored page text above which work on it leaves the reactor thread


@dataclass
class ProjectState:
    fetched_at: float = 0.0  # monotonic time of the last successful contact
    not_found_until: float = 0.0
    error: str | None = None
    inflight: Deferred[None] | None = None


@dataclass
class ListState:
    fetched_at: float = 0.0
    etag: str | None = None
    names_text: str = ""  # "\n"-joined names: compact, no per-name objects
    count: int = 0
    version: int = 0
    error: str | None = None
    inflight: Deferred[None] | None = None
    rendered: dict[str, tuple[str, bytes]] = field(default_factory=dict)




def _without_userinfo(url: str) -> str:
    """``url`` fit for a message: no ``user:password@``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def mirror_path(stage: str, f: UpstreamFile) -> str:
    """Where a mirror serves an upstream file: devpi's layout (spec 4.5), which clients and
    devpi-client's tests see in hrefs. With a hash (sha256 first, else the one upstream
    gave): ``+f/{h[:3]}/{h[3:16]}/NAME``; without: ``+e/{scheme_host_port_dirs}/NAME``."""
    return paths.mirror_file_path(stage, f.filename, f.hashes, f.url)


def file_version(filename: str) -> str | None:
    try:
        return parse_dist_filename(filename).version
    except InvalidFilename:
        return None


class Mirror:
    """The mirror component the web layer calls (``server.mirror``)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.reactor = server.reactor
        self.clients: dict[tuple[str, str], UpstreamClient] = {}
        self.projects: dict[tuple[str, str], ProjectState] = {}
        self.lists: dict[str, ListState] = {}
        self.downloads: dict[str, Download] = {}
        self.starting: dict[str, Shared] = {}
        # Big pages are worked on one at a time: memory stays bounded by one page's objects.
        self.page_work = DeferredSemaphore(1)
        self.download_failures: dict[str, int] = {}  # per stage, for /+status and /+metrics

    # -- upstream clients ---------------------------------------------------------------------
    def client(self, stage: str, config: dict[str, Any]) -> UpstreamClient:
        url = config["mirror_url"]
        if not url.endswith("/"):
            url += "/"
        key = (stage, url)
        client = self.clients.get(key)
        if client is None:
            client = UpstreamClient(
                url,
                reactor=self.reactor,
                timeout=self.server.settings.request_timeout,
                list_timeout=max(self.server.settings.request_timeout, 30.0),
                user_agent=f"devpid/{__version__}",
                backoff=Backoff(self.reactor, name=stage),
                allow_private=self.server.settings.allow_private_addresses,
                file_hosts=mirror_file_hosts(url, self.server.settings.mirror_file_hosts),
            )
            client.max_page_size = self.server.settings.mirror_max_page_size
            self.clients[key] = client
        return client

    @property
    def offline(self) -> bool:
        return bool(self.server.settings.offline_mode)

    def _now(self) -> float:
        return float(self.reactor.seconds())

    async def _page_work(
        self, text: str | None, work: Callable[..., Any], *args: Any, size: int = 0
    ) -> Any:
        """``work(text, *args)``: inline for a small page, in a thread (one at a time) for a
        big one (``text`` or ``size`` above BIG_PAGE), so the reactor never decodes or builds
        a big page itself."""
        if max(size, len(text or "")) <= BIG_PAGE:
            return work(text, *args)
        await self.page_work.acquire()
        try:
            return await self.server.in_thread(_then_trim, work, text, *args)
        finally:
            self.page_work.release()

    # -- project pages ------------------------------------------------------------------------
    def _state(self, stage: str, project: str) -> ProjectState:
        return self.projects.setdefault((stage, project), ProjectState())

    def is_fresh(self, stage: str, config: dict[str, Any], project: str) -> bool:
        """True if ``ensure`` would do nothing now (the fast path's check)."""
        if self.offline:
            return True
        state = self.projects.get((stage, project))
        if state is None:
            return False
        now = self._now()
        if state.fetched_at and now - state.fetched_at < float(
            config.get("mirror_cache_expiry") or 1800
        ):
            return True
        return state.not_found_until > now

    def forget(self, stage: str, project: str) -> None:
        """Treat the cached page as expired (an explicit refresh)."""
        state = self._state(stage, project)
        state.fetched_at = 0.0
        state.not_found_until = 0.0

    async def ensure(self, stage: str, config: dict[str, Any], project: str) -> None:
        """Make the cached page as fresh as policy wants, without ever hanging a request."""
        if self.offline:
            return
        state = self._state(stage, project)
        now = self._now()
        expiry = float(config.get("mirror_cache_expiry") or 1800)
        if state.fetched_at and now - state.fetched_at < expiry:
            return
        cached = self.server.store.exists(keys.mirror_page(stage, project))
        if not cached and state.not_found_until > now:
            return
        shared = self._shared(state, lambda: self._fetch(stage, config, project))
        timeout = GRACE if cached else self.server.settings.request_timeout + 1
        await self._wait_at_most(shared, timeout)

    def _shared(self, state: Any, start: Any) -> Deferred[None]:
        """The one in-flight fetch for ``state`` (started if none runs)."""
        if state.inflight is None:
            d = ensureDeferred(start())
            if d.called:
                return d
            state.inflight = d

            def done(result: object) -> object:
                state.inflight = None
                return result

            d.addBoth(done)
        return state.inflight

    async def _wait_at_most(self, shared: Deferred[None], timeout: float) -> None:
        """Wait for a shared fetch without letting our caller's cancellation reach it."""
        if shared.called:
            return
        waiter: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            if not waiter.called:
                waiter.callback(None)
            return result

        shared.addBoth(relay)
        call = self.reactor.callLater(timeout, relay, None)
        try:
            await waiter
        finally:
            if call.active():
                call.cancel()

    async def _fetch(self, stage: str, config: dict[str, Any], project: str) -> None:
        if self.server.settings.role == "replica":
            return await self._fetch_via_primary(stage, project)
        state = self._state(stage, project)
        key = keys.mirror_page(stage, project)
        text = self.server.store.get_text(key)
        etag, stored_serial = await self._page_work(text, _page_head)
        client = self.client(stage, config)
        try:
            page = await client.get_project(project, etag)
        except ProjectNotFound:
            state.error = None
            state.fetched_at = self._now()
            state.not_found_until = self._now() + float(config.get("mirror_cache_expiry") or 1800)
            return
        except UpstreamError as e:
            state.error = e.message
            return
        except Exception as e:  # never let a surprise break the page for good
            log.failure("fetching {project} from {stage} failed", project=project, stage=stage)
            state.error = f"error fetching {project} from upstream: {e}"
            return
        state.error = None
        state.fetched_at = self._now()
        state.not_found_until = 0.0
        if page.not_modified:
            return
        if (
            page.upstream_serial is not None
            and isinstance(stored_serial, int)
            and page.upstream_serial < stored_serial
            and not config.get("mirror_ignore_serial_header")
        ):
            state.error = (
                f"upstream serial went backwards for {project} "
                f"({page.upstream_serial} < {stored_serial}); serving the cached page"
            )
            return
        # ~400 bytes per stored file entry: a first fetch of a huge project is big too
        built = await self._page_work(text, _build_page, stage, page, etag,
                                      size=400 * len(page.files))
        if built is None:
            return  # same links: no new serial
        value, encoded = built
        async with self.server.store.write() as tx:
            tx.set_encoded(key, value, encoded)

    async def _fetch_via_primary(self, stage: str, project: str) -> None:
        """On a replica, the primary fetches and records the page; we wait for its serial."""
        import treq

        state = self._state(stage, project)
        follower = self.server.replica
        url = f"{self.server.settings.primary_url.rstrip('/')}/{stage}/+simple/{project}/"
        timeout = self.server.settings.request_timeout + 2
        try:
            headers: dict[bytes | str, bytes | str] = {
                "Accept": "application/vnd.pypi.simple.v1+json"}
            response = await treq.get(
                url, headers=headers,
                timeout=timeout, reactor=self.reactor,
            )
            await treq.content(response)
        except Exception as e:
            state.error = f"primary {url} could not be asked: {e}"
            return
        if response.code == 404:
            state.error = None
            state.fetched_at = self._now()
            state.not_found_until = self._now() + 60.0
            return
        if response.code != 200:
            state.error = f"primary answered {response.code} for {url}"
            return
        serial_header = response.headers.getRawHeaders(b"x-devpi-serial") or [b"-1"]
        if follower is not None:
            await follower.wait_for_serial(int(serial_header[0]), timeout)
        state.error = None
        state.fetched_at = self._now()

    async def project_links(
        self, stage: str, config: dict[str, Any], project: str
    ) -> list[Link] | None:
        text = self.server.store.get_text(keys.mirror_page(stage, project))
        state = self.projects.get((stage, project))
        if text is None:
            if self.offline:
                raise UpstreamUnavailable(
                    f"{project} is not cached on {stage} and the server runs in offline mode",
                    503,
                )
            if state is not None and state.error:
                raise UpstreamUnavailable(
                    f"could not reach the upstream of {stage} for {project}: {state.error}"
                )
            if state is not None and state.fetched_at:
                return None  # the upstream said it does not exist
            if state is not None and state.inflight is not None:
                raise UpstreamUnavailable(
                    f"timeout while getting data for {project!r} from the upstream of {stage}",
                    504,
                )
            return None
        cached_files = {
            value["filename"]: value
            for _, value in self.server.store.items(keys.file_prefix(stage, project))
        }
        provides_meta = bool(config.get("mirror_provides_core_metadata", True))
        links: list[Link] = await self._page_work(
            text, _page_links, stage, cached_files, self.offline, provides_meta
        )
        return links

    # -- project list -------------------------------------------------------------------------
    def _list_state(self, stage: str) -> ListState:
        return self.lists.setdefault(stage, ListState())

    def _local_names(self, stage: str) -> list[str]:
        return [keys.parse(k).project
                for k in self.server.store.keys(keys.mirror_prefix(stage))]

    async def _refresh_list(self, stage: str, config: dict[str, Any], wait: float) -> None:
        state = self._list_state(stage)
        expiry = float(config.get("mirror_cache_expiry") or 1800)
        if self.offline or config.get("mirror_no_project_list"):
            return
        if state.fetched_at and self._now() - state.fetched_at < expiry:
            return
        shared = self._shared(state, lambda: self._fetch_list(stage, config))
        if wait > 0:
            await self._wait_at_most(shared, wait)

    async def _fetch_list(self, stage: str, config: dict[str, Any]) -> None:
        state = self._list_state(stage)
        try:
            names, etag = await self.client(stage, config).get_project_list(state.etag)
        except UpstreamError as e:
            state.error = e.message
            return
        except Exception as e:
            log.failure("fetching the project list of {stage} failed", stage=stage)
            state.error = str(e)
            return
        state.error = None
        state.fetched_at = self._now()
        if names is None:
            return
        state.etag = etag

        def compact() -> tuple[str, int]:
            # One string, not 780k objects: joined, normalised and checked with C-level
            # string operations (names are unique upstream; a duplicate would be harmless).
            text = _NORMALIZE_RUNS.sub("-", "\n".join(names).lower())
            if not _SAFE_NAMES.fullmatch(text):
                text = "\n".join(n for n in text.split("\n") if _SAFE_NAME.fullmatch(n))
            return text, (text.count("\n") + 1 if text else 0)

        state.names_text, state.count = await self.server.in_thread(compact)
        state.version += 1
        state.rendered.clear()

    async def project_names_text(self, stage: str, config: dict[str, Any]) -> str:
        """All names, one per line: the upstream's list, or (without one) the cached ones."""
        state = self._list_state(stage)
        await self._refresh_list(stage, config, 0 if state.fetched_at else 30.0)
        if state.names_text:
            return state.names_text
        return "\n".join(self._local_names(stage))

    async def project_names(self, stage: str, config: dict[str, Any]) -> list[str]:
        text = await self.project_names_text(stage, config)
        return text.split("\n") if text else []

    async def list_token(self, stage: str, config: dict[str, Any]) -> Any:
        state = self._list_state(stage)
        await self._refresh_list(stage, config, 0 if state.fetched_at else 30.0)
        return (state.version, self.server.store.max_serial(keys.mirror_prefix(stage)))

    # -- files --------------------------------------------------------------------------------
    async def serve_file(self, request: Any, key: str, filename: str, *, metadata: bool) -> Any:
        from devpid.web.errors import HTTPError
        from devpid.web.files import serve_blob

        _, stage, project, _ = keys.parse(key)
        stored = self.server.store.get(keys.file(stage, project, filename))
        text = self.server.store.get_text(key)  # a big page: find the entry in a thread
        entry = (_page_entry(text, filename) if text is None or len(text) <= BIG_PAGE
                 else await self.server.in_thread(_page_entry, text, filename))
        if metadata:
            return await self._serve_metadata(request, stage, stored, entry, filename)
        if stored is not None and self.server.blobs.exists(stored["sha256"]):
            return serve_blob(self.server, request, stored["sha256"], filename)
        if entry is None:
            raise HTTPError(404, "no such file")
        # A replica (or a primary that lost a record) may hold the verified blob already;
        # only if this mirror fetched it from its upstream (not another index's upload).
        upstream_sha = str((entry.get("hashes") or {}).get("sha256") or "").lower()
        if upstream_sha and self.server.blobs.fetched_by(stage, upstream_sha):
            return serve_blob(self.server, request, upstream_sha, filename)
        if self.offline:
            raise HTTPError(502, f"{filename} is not cached and the server runs in offline mode")
        config = self.server.index_config(stage) or {}
        if config.get("mirror_use_external_urls"):
            if not self.client(stage, config).file_host_allowed(entry["url"]):
                # Not an open redirect: only to the upstream's own hosts (or the allowlist).
                raise HTTPError(
                    502, f"{filename}: its URL is neither on the upstream's host nor in "
                    "--mirror-file-hosts",
                )
            request.setResponseCode(302)
            request.setHeader(b"Location", entry["url"].encode())
            return b""
        if request.method == b"HEAD":
            request.setHeader(b"Content-Type", b"application/octet-stream")
            if entry.get("size") is not None:
                request.setHeader(b"Content-Length", str(entry["size"]).encode())
            return b""
        download = self.downloads.get(entry["path"])
        if download is not None and download.finished:
            try:
                await download.committed
            except DownloadFailed:
                download = None
            else:
                stored = self.server.store.get(keys.file(stage, project, filename))
                if stored is not None:
                    return serve_blob(self.server, request, stored["sha256"], filename)
                download = None
        if download is None:
            path = entry["path"]
            starting = self.starting.get(path)
            if starting is None:
                starting = self.starting[path] = Shared(
                    ensureDeferred(self._start_download(stage, config, project, entry))
                )
            try:
                download = await starting.wait()
            finally:
                if starting.done and self.starting.get(path) is starting:
                    del self.starting[path]
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if download.expected_size is not None:
            request.setHeader(b"Content-Length", str(download.expected_size).encode())
        return _TailResource(download)

    async def _start_download(
        self, stage: str, config: dict[str, Any], project: str, entry: dict[str, Any]
    ) -> Download:
        from devpid.web.errors import HTTPError

        path = entry["path"]
        client = self.client(stage, config)
        try:
            response = await client.open_file(entry["url"])
        except FileNotFoundUpstream:
            raise HTTPError(  # devpi's wording, which its client's tests match
                404, f"error 404 getting {_without_userinfo(entry['url'])}: the upstream of"
                f" {stage} no longer has {entry['filename']}"
            ) from None
        except UpstreamError as e:
            raise HTTPError(502, e.message) from None
        length = response.length if isinstance(response.length, int) else None
        out, tmp = self.server.blobs.new_temp()

        def on_done(dl: Download) -> Deferred[Any]:
            return ensureDeferred(self._record_download(stage, project, entry, dl))

        download = Download(
            url=entry["url"],
            tmp=tmp,
            out=out,
            expected=dict(entry.get("hashes") or {}),
            expected_size=length if length is not None else entry.get("size"),
            on_done=on_done,
            on_failed=lambda _: self._count_download_failure(stage),
        )
        self.downloads[path] = download

        def forget(result: object) -> object:
            if self.downloads.get(path) is download:
                del self.downloads[path]
            return result

        download.committed.addBoth(forget)
        download.committed.addErrback(lambda f: f.trap(DownloadFailed))
        body = BodyToDownload(download)
        response.deliverBody(body)
        settings = self.server.settings
        download.watch(
            self.reactor, settings.request_timeout, settings.mirror_min_rate, body.stop
        )
        return download

    def _count_download_failure(self, stage: str) -> None:
        self.download_failures[stage] = self.download_failures.get(stage, 0) + 1

    async def _record_download(
        self, stage: str, project: str, entry: dict[str, Any], dl: Download
    ) -> None:
        assert dl.sha256 is not None
        sha = dl.sha256
        filename = entry["filename"]

        def commit() -> str | None:
            from devpid.model.metadata import MetadataError, read_core_metadata

            blobs = self.server.blobs
            try:
                blobs.commit_temp(dl.tmp, sha)
            finally:
                blobs.discard(dl.tmp)  # gone after a commit, else removed now
            blobs.mark_fetched(stage, sha)
            if filename.endswith(".whl"):
                try:
                    meta = read_core_metadata(blobs.path(sha), filename)
                except MetadataError:
                    return None
                meta_sha = blobs.put_bytes(meta.raw)
                blobs.mark_fetched(stage, meta_sha)
                return meta_sha
            return None

        metadata_sha = await self.server.in_thread(commit)
        if self.server.settings.role == "replica":
            return
        value = {
            "filename": filename,
            "path": entry["path"],
            "sha256": sha,
            "size": dl.written,
            "version": file_version(filename),
            "upload_time": entry.get("upload-time") or entry.get("upload_time"),
            "requires_python": entry.get("requires-python") or entry.get("requires_python"),
            "yanked": entry.get("yanked", False),
            "metadata_sha256": metadata_sha,
            "url": entry["url"],
            "log": [],
        }
        async with self.server.store.write() as tx:
            tx.set(keys.file(stage, project, filename), value)

    async def _serve_metadata(
        self,
        request: Any,
        stage: str,
        stored: dict[str, Any] | None,
        entry: dict[str, Any] | None,
        filename: str,
    ) -> Any:
        from devpid.web.errors import HTTPError
        from devpid.web.files import serve_blob

        if stored is not None and stored.get("metadata_sha256"):
            return serve_blob(self.server, request, stored["metadata_sha256"],
                              filename + ".metadata")
        if entry is None:
            raise HTTPError(404, "no such file")
        meta = entry.get("core_metadata") or entry.get("core-metadata")
        meta_sha = str(meta.get("sha256") or "").lower() if isinstance(meta, dict) else ""
        if meta_sha and self.server.blobs.fetched_by(stage, meta_sha):
            return serve_blob(self.server, request, meta_sha, filename + ".metadata")
        if not meta or self.offline:
            raise HTTPError(404, "no core metadata for this file")
        config = self.server.index_config(stage) or {}
        try:
            data = await self.client(stage, config).get_bytes(entry["url"] + ".metadata",
                                                              16 * 1024 * 1024)
        except (UpstreamError, FileNotFoundUpstream) as e:
            raise HTTPError(502, getattr(e, "message", str(e))) from None
        if isinstance(meta, dict) and meta.get("sha256"):
            if hashlib.sha256(data).hexdigest() != meta["sha256"].lower():
                raise HTTPError(502, "upstream metadata does not match its published hash")
            def keep() -> None:
                self.server.blobs.mark_fetched(stage, self.server.blobs.put_bytes(data))

            await self.server.in_thread(keep)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return data

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (stage, _url), client in self.clients.items():
            lst = self.lists.get(stage)
            out[stage] = {
                **client.status(),
                "project_list": {
                    "names": lst.count if lst else 0,
                    "fetched_at": lst.fetched_at if lst else None,
                    "error": lst.error if lst else None,
                },
                "downloads_in_progress": sum(
                    1 for p in self.downloads if p.startswith(stage + "/")
                ),
                "download_failures": self.download_failures.get(stage, 0),
            }
        return {"mirrors": out, "offline-mode": self.offline}

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


# -- work on one stored page (pure functions: they run in a thread for big pages) -----------
# A thread running one json call on 20 MB holds the GIL for half a second, which stalls the
# reactor as surely as doing it there. So big pages are decoded and encoded one file entry
# at a time: the GIL is released between entries.
_FILES_AT = '"files":['
_DECODER = json.JSONDecoder()


def _page_files(text: str) -> list[dict[str, Any]]:
    """The ``files`` of a stored page (as ``encode_value`` wrote it), entry by entry."""
    start = text.find(_FILES_AT)
    if start == -1:
        files = json.loads(text).get("files", [])
        return files if isinstance(files, list) else []
    pos = start + len(_FILES_AT)
    out: list[dict[str, Any]] = []
    raw_decode = _DECODER.raw_decode
    if text.startswith("]", pos):
        return out
    while True:
        entry, pos = raw_decode(text, pos)
        out.append(entry)
        if text.startswith(",", pos):
            pos += 1
        elif text.startswith("]", pos):
            return out
        else:  # not our compact encoding after all
            files = json.loads(text).get("files", [])
            return files if isinstance(files, list) else []


def encode_page(value: dict[str, Any]) -> str:
    """``encode_value(value)``, built entry by entry (same text, no long GIL hold)."""
    parts = []
    for key in sorted(value):
        item = value[key]
        if key == "files" and isinstance(item, list):
            text = "[" + ",".join(encode_value(e) for e in item) + "]"
        else:
            text = encode_value(item)
        parts.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def _then_trim(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, then give the memory its temporaries took back to the system."""
    try:
        return work(*args)
    finally:
        memory.trim()


def _page_head(text: str | None) -> tuple[str | None, int | None]:
    """(etag, upstream serial) of a stored page, without decoding its files."""
    if text is None:
        return None, None
    start, end = text.find(_FILES_AT), text.rfind('],"name":')
    try:
        if start == -1 or end < start:
            raise ValueError("not the compact encoding")
        cached = json.loads(text[:start] + '"files":[]' + text[end + 1 :])
    except ValueError:
        cached = json.loads(text)
    serial = cached.get("upstream_serial")
    etag = cached.get("etag")
    return etag if isinstance(etag, str) else None, serial if isinstance(serial, int) else None


def _build_page(
    text: str | None, stage: str, page: Any, etag: str | None
) -> tuple[dict[str, Any], str] | None:
    """The value to store for a fetched page and its encoding; None if the links are the
    ones stored already (``text``, whose ETag was ``etag``)."""
    files = []
    for f in page.files:
        entry = f.to_json()
        entry["path"] = mirror_path(stage, f)
        files.append(entry)
    value = {
        "name": page.name,
        "files": files,
        "etag": page.etag,
        "upstream_serial": page.upstream_serial,
    }
    encoded = encode_page(value)
    if text is not None:
        # Unchanged links but a new ETag are no change: "etag" is the first key, so the text
        # with the stored ETag differs from ours only in its head.
        head = '{"etag":' + encode_value(page.etag)
        assert encoded.startswith(head)
        if '{"etag":' + encode_value(etag) + encoded[len(head) :] == text:
            return None
    return value, encoded


def _page_links(
    text: str,
    stage: str,
    cached_files: dict[str, dict[str, Any]],
    offline: bool,
    provides_meta: bool,
) -> list[Link]:
    """A stored page's links, sorted by version (offline: only the downloaded files)."""
    links = []
    for entry in _page_files(text):
        stored = cached_files.get(entry["filename"])
        if offline and stored is None:
            continue
        f = UpstreamFile.from_json(entry)
        meta: dict[str, str] | bool = f.core_metadata
        if stored is not None and stored.get("metadata_sha256"):
            meta = {"sha256": stored["metadata_sha256"]}
        elif not provides_meta:
            meta = False
        links.append(
            Link(
                filename=f.filename,
                path=entry["path"],
                stage=stage,
                version=file_version(f.filename),
                hashes=dict(f.hashes),
                requires_python=f.requires_python,
                yanked=f.yanked,
                core_metadata=meta,
                size=f.size,
                upload_time=f.upload_time,
            )
        )
    links.sort(key=lambda link: (version_key(link.version), link.filename))
    return links


def _page_entry(text: str | None, filename: str) -> dict[str, Any] | None:
    """The stored page's entry for ``filename``; in a big page only that entry is decoded
    (each file request of a 50,000-file project must not decode all of them)."""
    if text is None:
        return None
    at = text.find('"filename":' + json.dumps(filename) + ",")
    if at == -1:
        return None  # a JSON string cannot hide this key: no such entry
    # Entries are encoded with sorted keys, and "core_metadata" (always there) comes first.
    start = text.rfind('{"core_metadata":', 0, at)
    if start != -1:
        try:
            entry, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and entry.get("filename") == filename:
            return entry
    return next((e for e in _page_files(text) if e.get("filename") == filename), None)


class Shared:
    """One result for many waiters; a waiter's cancellation never reaches the work."""

    def __init__(self, work: Deferred[Any]) -> None:
        self.result: Any = None
        self.done = False
        self.waiters: list[Deferred[Any]] = []
        work.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        self.done, self.result = True, result
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.called:
                (w.errback if isinstance(result, Failure) else w.callback)(result)

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.done:
            (d.errback if isinstance(self.result, Failure) else d.callback)(self.result)
        else:
            self.waiters.append(d)
        return d


class _TailResource(Resource):
    isLeaf = True

    def __init__(self, download: Download) -> None:
        super().__init__()
        self.download = download

    def render(self, request: Any) -> Any:
        TailProducer(request, self.download).start()
        return NOT_DONE_YET


class MirrorService(service.Service):
    """Owns the Mirror component's connection pools for the lifetime of the process."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self.mirror.close())


__all__ = ["Mirror", "MirrorService"]
