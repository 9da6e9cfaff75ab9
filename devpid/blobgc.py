"""Reclaiming disk: remove the blobs no current record names.

Deleting a file, a release, a project, an index or a user removes its records in one
transaction, but its bytes stay in ``+blobs`` (other records may share them: blobs are
content-addressed). ``sweep`` removes the blobs that nothing references any more, so deleting
really frees the space. It runs in the server (``--gc-interval``) or as ``devpid gc``, and is
safe while the server runs:

* the blob files are listed first and the live set is read afterwards, so a reference
  committed while the tree was walked keeps its blob;
* a blob younger than the grace period is kept: an upload or a mirror download writes its
  blob before the transaction that references it, and reusing an existing blob refreshes its
  time (``BlobStore.reuse``), so in-flight writes are never swept;
* the temp area is left alone (start-up clears it).

On PostgreSQL the references are global (every node's commits are in the one database) and
the blob directory may be shared (``--blobdir``): the live set is then read from the
database at its head, never from this node's local view, which may be behind (a node that was
down, or a follower that lost its connection) and would miss what other nodes committed
meanwhile. Other nodes' temp areas (``tmp/<node>/``) are outside the ``ab/cd`` tree the sweep
walks; their finished blobs are young (or freshly ``reuse``-d) until committed, as here.

What counts as live: the ``sha256`` and ``metadata_sha256`` of every ``file/``, ``doc/`` and
``toxresult/`` record (what export and replication copy), and the upstream-declared hashes of
the files and core metadata on cached mirror pages, for blobs that mirror fetched from its own
upstream (a replica keeps mirror files it fetched itself under those digests, before the
primary's record arrives; another index's blob under a digest a page claims is not kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpid.domain import keys
from devpid.store import blob_root, store_url
from devpid.store.base import BlobStore, Store, StoreError
from devpid.store.blobs import LocalBlobStore, stored_digests
from devpid.store.sqlite import DB_NAME, SQLiteStore

log = Logger()

DEFAULT_GRACE_SECONDS = 3600.0


@dataclass
class SweepReport:
    """What one sweep did (or, with ``dry_run``, would do)."""

    scanned: int = 0
    live: int = 0
    young: int = 0
    removed: int = 0
    freed_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    serial: int = -1
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{self.scanned} blobs checked at serial {self.serial}: {verb} {self.removed} "
            f"({self.freed_bytes / 1e6:.1f} MB), kept {self.live} in use and {self.young} "
            f"younger than the grace period"
            + (f"; {len(self.errors)} errors" if self.errors else "")
        )


class Records(Protocol):
    """What a sweep reads records through: a Store, or the database's rows (_RowsView)."""

    def iter_items(self, prefix: str) -> Iterator[tuple[str, Any]]: ...


def live_blobs(view: Records, blobs: BlobStore | None = None) -> set[str]:
    """Every digest a current record names (see the module docstring).

    A digest a mirror page declares counts only if that mirror fetched the blob from its
    own upstream (``BlobStore.fetched_by``): a page cannot keep another index's blob alive.
    Records are read one at a time: a sweep never holds every record, or every cached mirror
    page, in memory at once.
    """
    live: set[str] = set()
    for kind in keys.RECORD_KINDS:
        for key, value in view.iter_items(f"{kind}/"):
            live.update(keys.record_blobs(key, value))
    if blobs is None:
        return live
    for key, value in view.iter_items(keys.MIRRORS):
        stage = keys.parse(key).stage
        live.update(d for d in keys.mirror_page_blobs(value)
                    if d not in live and blobs.fetched_by(stage, d))
    return live


def stored_blobs(root: Path) -> Iterable[tuple[str, Path]]:
    """(digest, path) of every blob file under ``root`` (a local blob directory)."""
    for digest in stored_digests(root):
        yield digest, root / LocalBlobStore.relpath(digest)


def sweep(
    blobs: BlobStore,
    read_live: Callable[[], tuple[int, set[str]]],
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.time,
) -> SweepReport:
    """Remove unreferenced blobs older than ``grace_seconds``. Blocking: run in a thread.

    ``read_live`` returns (serial, live digests); it is called after the tree was listed.
    ``progress(n, total)`` is called per blob checked; ``should_stop`` ends the sweep early
    (a stopping server), with what was done so far in the report.
    """
    report = SweepReport(dry_run=dry_run)
    found = list(blobs.stored())
    report.scanned = len(found)
    report.serial, live = read_live()
    for n, digest in enumerate(found, 1):
        if should_stop():
            report.scanned = n - 1
            break
        if progress is not None:
            progress(n, len(found))
        if digest in live:
            report.live += 1
            continue
        try:
            info = blobs.info(digest)  # now, not at listing time: a reuse may have refreshed it
            if info is None:
                continue
            size, mtime = info
            if clock() - mtime < grace_seconds:
                report.young += 1
                continue
            if not dry_run and not blobs.delete(digest):
                continue
        except OSError as e:
            report.errors.append(f"{blobs.relpath(digest)}: {e}")
            continue
        report.removed += 1
        report.freed_bytes += size
    if not dry_run and report.removed:
        blobs.forget_stale_origins()
    return report


def read_live_from(db: Path) -> Callable[[], tuple[int, set[str]]]:
    """A ``read_live`` over a fresh read-only connection to ``db`` (one per sweep).

    Its own connection, so a sweep in a worker thread never shares the server's.
    """
    blobs = LocalBlobStore(blob_root(db.parent))  # the server directory's layout (open_store)

    def read() -> tuple[int, set[str]]:
        store: Store = SQLiteStore(db, readonly=True)  # the file (or a node's view)
        try:
            # One read transaction: the live set is of one serial, never half of a commit.
            with store.read_snapshot() as serial:
                return serial, live_blobs(store, blobs)
        finally:
            store.close()

    return read


class _RowsView:
    """``iter_items`` over an open PostgreSQL connection (what live_blobs reads), streamed
    through a server-side cursor as the SQLite store streams its rows."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def iter_items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        import json

        from devpid.store.sqlite import _upper_bound  # kv's keys sort as COLLATE "C" there too

        with self.conn.cursor(name="devpid_gc") as cur:
            cur.execute("SELECT key, value FROM kv WHERE key >= %s AND key < %s",
                        (prefix, _upper_bound(prefix)))
            for key, value in cur:
                yield str(key), json.loads(value)


def read_live_from_database(url: str, blobs: BlobStore) -> Callable[[], tuple[int, set[str]]]:
    """A ``read_live`` over the shared database itself: every node's references, at head.

    One REPEATABLE READ transaction on a connection of its own (a sweep runs in a thread),
    so the live set is of one serial, never half of another node's commit.
    """

    def read() -> tuple[int, set[str]]:
        import psycopg

        from devpid.store.postgres import PostgresStore, connect

        conn = connect(url)
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                return PostgresStore._head(conn), live_blobs(_RowsView(conn), blobs)
        except psycopg.Error as e:
            raise StoreError(f"reading the references from the database: {e}") from e
        finally:
            conn.close()

    return read


def read_live_for(serverdir: Path) -> Callable[[], tuple[int, set[str]]]:
    """How a sweep of ``serverdir`` learns what is referenced: its database on PostgreSQL
    (shared by every node), else its own SQLite file."""
    url = store_url(serverdir)
    if url is not None:
        return read_live_from_database(url, LocalBlobStore(blob_root(serverdir)))
    return read_live_from(serverdir / DB_NAME)


# -- in the server -----------------------------------------------------------------------------
FIRST_SWEEP_DELAY = 300.0  # after start-up: soon enough after a restart, never during it
RETRY_START = 60.0


class BlobGCService(service.Service):
    """Sweeps the blob store every ``interval`` seconds (``--gc-interval``; 0 = never).

    The sweep runs in a worker thread with its own read-only database connection. A failing
    sweep is logged and retried with backoff (from a minute up to the interval); nothing it
    raises ends the loop.
    """

    def __init__(
        self,
        reactor: Any,
        run_sweep: Callable[[Callable[[], bool]], Deferred[SweepReport]],
        *,
        interval: float,
        grace_seconds: float,
    ) -> None:
        self.reactor = reactor
        self.run_sweep = run_sweep
        self.interval = interval
        self.grace_seconds = grace_seconds
        self.failures = 0
        self.removed_total = 0
        self.freed_bytes_total = 0
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._call: Any = None
        self._running: Deferred[Any] | None = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if self.interval > 0:
            self._schedule(min(self.interval, FIRST_SWEEP_DELAY))

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self._stopping = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._running  # twistd waits for a sweep in progress (it stops early)

    def _schedule(self, delay: float) -> None:
        if not self._stopping:
            self._call = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        try:
            d = self.run_sweep(lambda: self._stopping)
        except Exception:  # a sweep that cannot even start: same as a failed one
            d = fail()  # (a Failure of the exception being handled, with its traceback)
        self._running = d
        # _swept and _failed each give the delay until the next sweep.
        chain: Any = d.addCallbacks(self._swept, self._failed)
        chain.addErrback(self._bookkeeping_failed)
        chain.addBoth(self._settle)

    def _settle(self, delay: float) -> None:
        self._running = None
        self._schedule(delay)

    def _bookkeeping_failed(self, failure: Failure) -> float:
        log.failure("blob gc: handling the sweep's outcome failed", failure)
        return min(self.interval, RETRY_START)

    def _swept(self, report: SweepReport) -> float:
        self.failures = 0
        self.removed_total += report.removed
        self.freed_bytes_total += report.freed_bytes
        self.last_error = None
        self.last = {
            "finished": time.time(),
            "serial": report.serial,
            "scanned": report.scanned,
            "removed": report.removed,
            "freed_bytes": report.freed_bytes,
            "errors": len(report.errors),
        }
        for error in report.errors[:10]:
            log.warn("blob gc: {error}", error=error)
        log.info("blob gc: {summary}", summary=report.summary())
        return self.interval

    def _failed(self, failure: Failure) -> float:
        self.failures += 1
        delay = min(self.interval, RETRY_START * 2 ** min(self.failures - 1, 16))
        self.last_error = failure.getErrorMessage()
        log.failure("blob gc sweep failed; next try in {delay:.0f} s", failure, delay=delay)
        return delay

    def status(self) -> dict[str, Any]:
        return {
            "blob-gc": {
                "interval": self.interval,
                "grace": self.grace_seconds,
                "running": self._running is not None,
                "last": self.last,
                "last_error": self.last_error,
                "failures": self.failures,
                "removed_total": self.removed_total,
                "freed_bytes_total": self.freed_bytes_total,
            }
        }


def build(server: Any) -> BlobGCService:
    """The sweeping service of a server process that owns its blobs (not a worker)."""
    settings = server.settings
    read_live = read_live_for(settings.serverdir)

    def run_sweep(should_stop: Callable[[], bool]) -> Deferred[SweepReport]:
        return server.in_thread(
            sweep,
            server.blobs,
            read_live,
            grace_seconds=settings.gc_grace,
            should_stop=should_stop,
        )

    return BlobGCService(
        server.reactor, run_sweep, interval=settings.gc_interval, grace_seconds=settings.gc_grace
    )
