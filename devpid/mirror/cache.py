"""Bounded mirror caches: ``mirror_max_bytes`` per mirror index.

A mirror's files are a cache of its upstream. When a mirror holds more than its bound, its
least recently downloaded files are evicted: their ``file/`` records are deleted in one
transaction (pages list them again as not cached; the next request fetches them again from
the upstream), the mirror's provenance marker goes, and the blob is unlinked unless another
record (a private upload with the same bytes, another mirror) still names it. Only records
of mirror indexes are candidates, so private uploads are never evicted.

"Recently downloaded" is when a client last got the file from this process; files not
served since the start count from when they were cached (their blob's time). The index of
cached files is built once at start-up, read in slices by worker threads over one read-only
connection (one serial) and added a slice per reactor turn, then kept current by the store's
commit listener, so requests and evictions never scan the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from devpid.domain import keys
from devpid.mirror.policy import MAX_BYTES
from devpid.store.base import BlobStore
from devpid.store.blobs import HEX64

log = Logger()
RETRY_DELAY = 5.0  # seconds before a failed eviction run is tried again
SLICE = 2000  # file records added to the start-up index per reactor turn

_Ref = tuple[str, str | None, int]  # sha256, metadata sha256, size


@dataclass
class StageStats:
    """Counters of one mirror (since the start of this process)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    evicted_bytes: int = 0


def _sha(value: object) -> str | None:
    return value if isinstance(value, str) and HEX64.fullmatch(value) else None


def record_ref(value: object) -> _Ref | None:
    """(sha256, metadata sha256, size) of a ``file/`` record, or None if it names no blob."""
    if not isinstance(value, dict):
        return None
    sha = _sha(value.get("sha256"))
    if sha is None:
        return None
    size = value.get("size")
    return sha, _sha(value.get("metadata_sha256")), size if isinstance(size, int) else 0


def stage_of(key: str) -> str:
    """The stage of a file record's key ("" for a malformed one)."""
    return keys.parse(key).stage if key.count("/") >= 3 else ""


def choose_victims(
    files: Iterable[tuple[str, int, float]], max_bytes: int
) -> list[str]:
    """Keys to evict, least recently used first, until the total is within ``max_bytes``.

    ``files``: (key, size, last used). Pure, for the rule's unit test.
    """
    ordered = sorted(files, key=lambda f: (f[2], f[0]))
    total = sum(size for _, size, _ in ordered)
    victims = []
    for key, size, _ in ordered:
        if total <= max_bytes:
            break
        victims.append(key)
        total -= size
    return victims


def remove_blobs(
    blobs: BlobStore, stage: str, refs: Iterable[_Ref], referenced: Callable[[str], bool]
) -> int:
    """Drop the stage's provenance markers and the blobs nothing else names. Blocking."""
    freed = 0
    for sha, meta, _size in refs:
        for digest in (sha, meta):
            if digest is None:
                continue
            try:
                blobs.unmark_fetched(stage, digest)
                if not referenced(digest):
                    info = blobs.info(digest)
                    if blobs.delete(digest) and info is not None:
                        freed += info[0]
            except OSError as e:
                log.warn("could not remove evicted blob {sha}: {e}", sha=digest, e=e)
    return freed


class IndexReader:
    """Every ``file/`` record at one serial, read in slices from worker threads.

    One read transaction on its own read-only connection (one serial for the whole build,
    however many slices), records read one at a time: memory holds one slice, not the
    store. Each method blocks: call them from a thread, one at a time.
    """

    def __init__(self, db: Path, blobs: BlobStore) -> None:
        from devpid.store.sqlite import SQLiteStore

        self.blobs = blobs
        self.store = SQLiteStore(db, readonly=True)
        self._snapshot = self.store.read_snapshot()
        try:
            self.serial = self._snapshot.__enter__()
            self.mirrors = {
                keys.stage_name(key) for key, value in self.store.items(keys.INDEXES)
                if isinstance(value, dict) and value.get("type") == "mirror"
            }
            self._records = self.store.iter_items(keys.FILES)
        except BaseException:
            self.close()
            raise

    def next_slice(self, size: int) -> list[tuple[str, _Ref, float | None]]:
        """Up to ``size`` records (fewer only at the end): (key, blobs, cached at or None
        for a file that is not a mirror's)."""
        found: list[tuple[str, _Ref, float | None]] = []
        for key, value in self._records:
            ref = record_ref(value)
            if ref is None:
                continue
            added: float | None = None
            if stage_of(key) in self.mirrors:
                info = self.blobs.info(ref[0])
                added = info[1] if info is not None else 0.0
            found.append((key, ref, added))
            if len(found) >= size:
                break
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._snapshot.__exit__(None, None, None)
        self.store.close()


class MirrorCache:
    """The in-memory index of cached mirror files; ``server.mirror_cache`` (main process)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.used: dict[str, float] = {}  # dist sha256 -> when a client last got it here
        self.records: dict[str, _Ref] = {}  # every file/ key (any stage) -> its blobs
        self.refs: dict[str, int] = {}  # digest -> records naming it
        self.by_stage: dict[str, dict[str, float]] = {}  # mirror -> file/ key -> cached at
        self.totals: dict[str, int] = {}  # mirror -> bytes its records name
        self.mirror_shas: dict[str, str] = {}  # dist sha256 -> a mirror stage caching it
        self.stats: dict[str, StageStats] = {}
        self.loaded = False
        self._queued: list[tuple[int, dict[str, Any]]] = []
        self._check: Any = None
        self._dirty: set[str] = set()
        self.enforcing = server.settings.role != "replica"

    # -- hot path hooks (a dict operation each) ----------------------------------------------
    def touch(self, sha256: str) -> None:
        """A blob was served: a cache hit when a mirror caches it."""
        stage = self.mirror_shas.get(sha256)
        if stage is not None:
            self.used[sha256] = float(self.server.reactor.seconds())
            self._stats(stage).hits += 1

    def miss(self, stage: str) -> None:
        self._stats(stage).misses += 1

    def _stats(self, stage: str) -> StageStats:
        stats = self.stats.get(stage)
        if stats is None:
            stats = self.stats[stage] = StageStats()
        return stats

    # -- the index ---------------------------------------------------------------------------
    def _is_mirror(self, stage: str) -> bool:
        config = self.server.index_config(stage)
        return bool(config) and config.get("type") == "mirror"

    def _add(self, key: str, ref: _Ref, added: float, mirror: bool | None = None) -> None:
        self._remove(key)
        self.records[key] = ref
        for digest in ref[:2]:
            if isinstance(digest, str):
                self.refs[digest] = self.refs.get(digest, 0) + 1
        stage = stage_of(key)
        if mirror if mirror is not None else self._is_mirror(stage):
            self.by_stage.setdefault(stage, {})[key] = added
            self.totals[stage] = self.totals.get(stage, 0) + ref[2]
            self.mirror_shas[ref[0]] = stage

    def _remove(self, key: str) -> None:
        ref = self.records.pop(key, None)
        if ref is None:
            return
        for digest in ref[:2]:
            if isinstance(digest, str):
                left = self.refs.get(digest, 0) - 1
                if left > 0:
                    self.refs[digest] = left
                else:
                    self.refs.pop(digest, None)
        stage = stage_of(key)
        if self.by_stage.get(stage, {}).pop(key, None) is not None:
            self.totals[stage] = self.totals.get(stage, 0) - ref[2]
            if ref[0] not in self.refs:
                self.mirror_shas.pop(ref[0], None)
                self.used.pop(ref[0], None)

    def referenced(self, digest: str) -> bool:
        return self.refs.get(digest, 0) > 0

    def on_commit(self, serial: int, changes: dict[str, Any]) -> None:
        if not self.loaded:
            self._queued.append((serial, {k: v for k, v in changes.items()
                                          if k.startswith((keys.FILES, keys.INDEXES))}))
            return
        now = float(self.server.reactor.seconds())
        for key, value in changes.items():
            if key.startswith(keys.FILES):
                ref = record_ref(value)
                if ref is None:
                    self._remove(key)
                else:
                    self._add(key, ref, now)
                    if key in self.by_stage.get(stage_of(key), {}):
                        self._dirty.add(stage_of(key))
            elif key.startswith(keys.INDEXES) and isinstance(value, dict):
                self._dirty.add(keys.stage_name(key))
        if self._dirty:
            self._schedule()

    def open_reader(self, db: Path) -> IndexReader:
        """A reader of every file record at one serial. Blocking (a thread)."""
        return IndexReader(db, self.server.blobs)

    def reset(self) -> None:
        """Forget a partly built index (a failed build starts again from nothing)."""
        self.records.clear()
        self.refs.clear()
        self.by_stage.clear()
        self.totals.clear()
        self.mirror_shas.clear()

    def add_loaded(self, found: list[tuple[str, _Ref, float | None]]) -> None:
        """One slice of the start-up index: a dict update each, no store reads, so one
        slice is one short reactor turn and requests are served between slices."""
        for key, ref, added in found:
            self._add(key, ref, added or 0.0, mirror=added is not None)

    def finish_loading(self, serial: int) -> None:
        """The index holds every record at ``serial``: apply the commits made since."""
        self.loaded = True
        queued, self._queued = self._queued, []
        for s, changes in queued:
            if s > serial:
                self.on_commit(s, changes)
        self._dirty.update(self.bounded_stages())
        self._schedule()

    # -- bounds ------------------------------------------------------------------------------
    def bounded_stages(self) -> set[str]:
        return set(self.by_stage)

    def usage(self) -> dict[str, tuple[int, int]]:
        """Per mirror stage: (files, bytes) cached."""
        return {stage: (len(keys), self.totals.get(stage, 0))
                for stage, keys in self.by_stage.items()}

    def _schedule(self) -> None:
        if self.enforcing and (self._check is None or not self._check.active()):
            self._check = self.server.reactor.callLater(0.2, self._run)

    def _run(self) -> None:
        d = ensureDeferred(self.enforce())
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        """Log, and try the same stages again later (enforce put them back): a failed
        eviction (a full disk, a locked database) must not leave a mirror over its bound."""
        log.failure("mirror cache eviction failed; retrying in {delay} s", failure,
                    delay=RETRY_DELAY)
        if self.enforcing and (self._check is None or not self._check.active()):
            self._check = self.server.reactor.callLater(RETRY_DELAY, self._run)

    async def enforce(self) -> None:
        """Evict from every mirror changed since the last run that is over its bound."""
        dirty, self._dirty = self._dirty, set()
        try:
            await self._enforce(dirty)
        except BaseException:
            self._dirty |= dirty  # stages within their bound are skipped cheaply next time
            raise

    async def _enforce(self, dirty: set[str]) -> None:
        for stage in sorted(dirty):
            config = self.server.index_config(stage) or {}
            bound = config.get(MAX_BYTES)
            if config.get("type") != "mirror" or not isinstance(bound, int) or bound <= 0:
                continue
            if self.totals.get(stage, 0) <= bound:
                continue  # the common case: O(1)
            records, used = self.records, self.used
            files = [(key, records[key][2], max(used.get(records[key][0], 0.0), added))
                     for key, added in self.by_stage.get(stage, {}).items()]
            victims = await self.server.in_thread(choose_victims, files, bound)  # the sort
            if victims:
                await self.evict(stage, victims)
        total_bound = int(getattr(self.server.settings, "mirror_max_bytes", 0) or 0)
        if dirty and total_bound > 0 and sum(self.totals.values()) > total_bound:
            files = [(key, self.records[key][2],
                      max(self.used.get(self.records[key][0], 0.0), added))
                     for cached in self.by_stage.values() for key, added in cached.items()]
            victims = await self.server.in_thread(choose_victims, files, total_bound)
            for stage in sorted({stage_of(key) for key in victims}):
                await self.evict(stage, [key for key in victims if stage_of(key) == stage])

    async def evict(self, stage: str, victims: list[str]) -> None:
        from devpid.domain import keys
        from devpid.store.sqlite import encode_value

        refs = [self.records[key] for key in victims if key in self.records]
        # The file record owned the URL path; writing the mirror page again in the same
        # commit gives the path back to the page, so the next request downloads it again.
        store = self.server.store
        pages: dict[str, tuple[Any, str]] = {}
        for page_key in sorted({keys.mirror_page(stage, keys.parse(key).project)
                                for key in victims}):
            page = store.get(page_key)
            if page is not None:
                pages[page_key] = (page, await self.server.in_thread(encode_value, page))
        async with store.write() as tx:
            for key in victims:
                tx.delete(key)
            for page_key, (page, text) in pages.items():
                current = store.get(page_key)
                if current is not None:
                    tx.set_encoded(page_key, current,
                                   text if current == page else encode_value(current))
        # The commit listener has dropped the records; what nothing names now can go.
        stats = self._stats(stage)
        stats.evictions += len(refs)
        stats.evicted_bytes += sum(size for _, _, size in refs)
        log.info("evicted {n} files ({size} bytes) from the cache of {stage}",
                 n=len(refs), size=sum(size for _, _, size in refs), stage=stage)
        unreferenced = {d for ref in refs for d in ref[:2] if d and not self.referenced(d)}
        await self.server.in_thread(remove_blobs, self.server.blobs, stage, refs,
                                    lambda d: d not in unreferenced)

    def status(self) -> dict[str, Any]:
        usage = self.usage()
        out: dict[str, Any] = {}
        for stage in sorted(set(usage) | set(self.stats)):
            files, size = usage.get(stage, (0, 0))
            stats = self._stats(stage)
            asked = stats.hits + stats.misses
            config = self.server.index_config(stage) or {}
            out[stage] = {
                "files": files,
                "bytes": size,
                "max_bytes": config.get(MAX_BYTES) or None,
                "hits": stats.hits,
                "misses": stats.misses,
                "hit_ratio": round(stats.hits / asked, 4) if asked else None,
                "evictions": stats.evictions,
                "evicted_bytes": stats.evicted_bytes,
            }
        return {
            "mirror-cache": out,
            "mirror-cache-loaded": self.loaded,
            "mirror-cache-total": {
                "bytes": sum(self.totals.values()),
                "max_bytes": int(getattr(self.server.settings, "mirror_max_bytes", 0)) or None,
            },
        }


class MirrorCacheService(service.Service):
    """Builds the index off the reactor at start-up, retrying with backoff on failure."""

    def __init__(self, cache: MirrorCache, db: Path) -> None:
        self.cache = cache
        self.db = db
        self.delay = 5.0
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self.cache.server.store.add_commit_listener(self.cache.on_commit)
        self._call = self.cache.server.reactor.callLater(0, self._load)

    def _load(self) -> None:
        self._call = None
        self.cache.reset()
        d = ensureDeferred(self._build())
        d.addErrback(self._failed)

    async def _build(self) -> None:
        """Read slices in a thread, add each in one reactor turn (1M files do not stall
        the server for seconds at start-up)."""
        in_thread = self.cache.server.in_thread
        reader: IndexReader = await in_thread(self.cache.open_reader, self.db)
        try:
            while self.running:
                found = await in_thread(reader.next_slice, SLICE)
                if not found:
                    self.cache.finish_loading(reader.serial)
                    return
                self.cache.add_loaded(found)
        finally:
            await in_thread(reader.close)

    def _failed(self, failure: Any) -> None:
        log.failure("indexing the mirror cache failed; retrying", failure)
        if self.running:
            self._call = self.cache.server.reactor.callLater(self.delay, self._load)
            self.delay = min(self.delay * 2, 600.0)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self.cache._check is not None and self.cache._check.active():
            self.cache._check.cancel()

