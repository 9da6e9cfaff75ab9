"""The storage interface: snapshots of JSON values by key, one serial per committed change.

Everything devpid remembers (users, index configs, releases, file records, cached mirror
pages) is a JSON value under a string key. A write transaction collects changes and commits
them as ONE new serial with ONE changelog entry ``{key: new value or None}``. Page caches,
replication, events and export all derive from that single mechanism, so a backend only has
to implement ``Store`` (SQLite: ``SQLiteStore``; PostgreSQL: ``PostgresStore``), and blob
storage ``BlobStore`` (``LocalBlobStore``); callers type against these protocols.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from devpid.store.writes import WriteQueue

JSON = Any
Changes = dict[str, JSON]
CommitListener = Callable[[int, Changes], None]


class StoreError(Exception):
    """The store cannot do what was asked (e.g. a replica applying a serial out of order)."""


class WriteFailed(StoreError):
    """Storage refused a write (a commit, a blob): nothing was recorded. The message is the
    real error; the web layer answers ``code`` (503: the request itself was fine)."""

    code = 503

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class Unavailable(WriteFailed):
    """The database is unreachable, or busy beyond the lock timeout (another node holds
    its commit lock): an operator's condition, logged as one line; answered 503."""


class OutOfSpace(WriteFailed):
    """The disk (or quota) holding the server directory is full. Answered 507 (a database
    commit: 503); writes work again as soon as space is freed."""

    code = 507


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error`` says the disk is full: ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        return (getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(error))
    return False


def write_failed(what: str, error: BaseException, *, code: int | None = None) -> WriteFailed:
    """The WriteFailed (or OutOfSpace) to raise for ``error`` while doing ``what``."""
    if is_out_of_space(error):
        return OutOfSpace(f"server is out of disk space: {what} failed ({error})", code=code)
    return WriteFailed(f"{what} failed: {error}", code=code)


class ReadView(Protocol):
    """Read access to keys: the store itself, or a transaction (which sees its own writes)."""

    def get(self, key: str) -> JSON | None: ...

    def items(self, prefix: str) -> list[tuple[str, JSON]]:
        """All (key, value) pairs whose key starts with ``prefix``, sorted by key."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix``, sorted (no value is read)."""
        ...


class WriteTransaction(ReadView, Protocol):
    """Collects changes; leaving the ``transaction()`` block commits them as one serial."""

    @property
    def serial(self) -> int | None:
        """The serial the block committed (after it); None while open or if nothing changed."""
        ...

    def set(self, key: str, value: JSON) -> None:
        """Set a value; an unchanged value records nothing (no empty serials)."""
        ...

    def set_encoded(self, key: str, value: JSON, text: str) -> None:
        """Set a value already encoded off the reactor (``encode_value(value)``)."""
        ...

    def delete(self, key: str) -> None: ...

    @property
    def changes(self) -> Mapping[str, JSON]:
        """What the transaction will commit: ``{key: new value or None}``."""
        ...


class ChangelogReader(Protocol):
    """A file-like reader of one changelog entry's JSON text (big entries stream)."""

    size: int

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


class Store(ReadView, Protocol):
    """A store of JSON values with a serial-numbered changelog: what every caller uses.

    ``open_store`` and the backends construct concrete stores (``SQLiteStore``,
    ``PostgresStore``); everything else types against this. Reads and commits run on the
    calling thread (the reactor's); ``read_apart`` is the one read safe in another thread.
    """

    @property
    def uuid(self) -> str:
        """Identifies the store's history (replicas refuse to follow another one)."""
        ...

    @property
    def serial(self) -> int:
        """The last serial this process knows of (-1: empty)."""
        ...

    @property
    def path(self) -> Path:
        """The SQLite file holding the current state (the store, or a node's view of the
        database): read-only readers in threads or other processes open it themselves."""
        ...

    def iter_items(self, prefix: str) -> Iterator[tuple[str, JSON]]:
        """What ``items`` returns, read one record at a time: full-store scans (export, gc,
        the mirror cache's index) never hold every record in memory. Consume it before
        writing on the same connection."""
        ...

    # -- reading one key -------------------------------------------------------------------
    def get_text(self, key: str) -> str | None:
        """The stored JSON text of ``key`` (decode a big value off the reactor)."""
        ...

    def exists(self, key: str) -> bool: ...

    def get_with_serial(self, key: str) -> tuple[JSON | None, int]:
        """(value, serial that last wrote it); (None, -1) if absent."""
        ...

    def serial_of(self, key: str) -> int:
        """The serial that last wrote ``key`` (-1 if absent); reads no value."""
        ...

    def read_apart(self, key: str) -> tuple[JSON | None, int]:
        """As ``get_with_serial``, over a connection of its own: safe in a worker thread."""
        ...

    # -- derived lookups -------------------------------------------------------------------
    def max_serial(self, prefix: str) -> int:
        """The last serial that changed any existing key under ``prefix`` (-1 if none)."""
        ...

    def lookup_path(self, path: str) -> tuple[str, str] | None:
        """Map a served file path (``user/index/+f/...``) to (key, filename)."""
        ...

    # -- the changelog ---------------------------------------------------------------------
    def changelog(self, serial: int) -> Changes | None: ...

    def changelog_text(self, serial: int) -> str | None:
        """One entry's JSON text (decode a big one off the reactor)."""
        ...

    def changelog_since(self, serial: int, limit: int) -> list[tuple[int, Changes]]:
        """Up to ``limit`` entries from ``serial`` on, in order."""
        ...

    def changelog_rows_since(
        self, serial: int, limit: int, inline_max: int
    ) -> list[tuple[int, int, str | None]]:
        """(serial, size in bytes, JSON text or None if above ``inline_max``), unparsed."""
        ...

    def open_changelog(self, serial: int) -> ChangelogReader | None:
        """A streaming reader of one entry (None if absent)."""
        ...

    def last_commit_time(self) -> float | None: ...

    # -- consistent reads ------------------------------------------------------------------
    def read_snapshot(self) -> AbstractContextManager[int]:
        """One read transaction: reads inside see the state at the serial it yields."""
        ...

    def snapshot(self) -> Iterator[tuple[str, JSON]]:
        """Every key and value, sorted by key (inside ``read_snapshot``: at one serial)."""
        ...

    # -- writing ---------------------------------------------------------------------------
    @property
    def writes(self) -> WriteQueue:
        """The process's write lock (``write()`` blocks wait there), with its counts."""
        ...

    def write(self) -> AbstractAsyncContextManager[WriteTransaction]:
        """``async with store.write() as tx:`` the daemon's writes, one at a time per process
        (devpid/store/writes.py); the commit never blocks the reactor on the network."""
        ...

    def transaction(self) -> AbstractContextManager[WriteTransaction]:
        """Yields a transaction; a clean exit commits it (if anything changed). Synchronous:
        for tools, start-up and replays; the daemon's handlers use ``write()``."""
        ...

    def apply_serial(
        self, serial: int, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> None:
        """Record an entry under exactly ``serial`` (the next one): replicas, import.
        ``encoded``: values already encoded off the reactor (``encode_value``)."""
        ...

    async def apply_serial_async(
        self, serial: int, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> None:
        """``apply_serial`` for the daemon (a replica following its primary): it waits for
        the process's earlier writes, and on PostgreSQL the database round trip runs in the
        write thread, so a replica's reactor never waits on the network either."""
        ...

    # -- hearing commits -------------------------------------------------------------------
    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(serial, changes)`` after every commit, in serial order."""
        ...

    def poll_external(self) -> None:
        """Deliver to the listeners the commits other processes made."""
        ...

    def refresh_serial(self) -> int:
        """``poll_external``, then the current serial."""
        ...

    def close(self) -> None: ...


class BlobStore(Protocol):
    """Content-addressed file storage, named by sha256 hex digest (``LocalBlobStore``:
    ``+blobs`` on disk). Every method may block (disk or network): call it from a worker
    thread unless the blob is known to be small. A blob is written to a temp file, then
    committed under its digest: nothing half-written is ever served."""

    def relpath(self, sha256: str) -> str:
        """The blob's name below the store's root (what an nginx X-Accel location appends);
        raises ValueError for anything but a sha256 hex digest."""
        ...

    def path(self, sha256: str) -> Path:
        """A local file with the blob's bytes (a remote backend: a local copy)."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """The blob for reading (FileNotFoundError if it is not stored); the caller closes."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def info(self, sha256: str) -> tuple[int, float] | None:
        """(size, modification time) of a stored blob; None if it is not stored."""
        ...

    def reuse(self, sha256: str) -> bool:
        """Whether the blob is stored, refreshing its time so gc keeps it a while."""
        ...

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """An open temp file to write a new blob into."""
        ...

    def commit_temp(self, tmp: Path, sha256: str) -> Path:
        """Make a fully written temp file the blob ``sha256`` (durably)."""
        ...

    def discard(self, tmp: Path) -> None:
        """Remove a temp file (gone already after a commit)."""
        ...

    def put_bytes(self, data: bytes) -> str:
        """Store small content; returns its sha256."""
        ...

    def delete(self, sha256: str) -> bool:
        """Remove a blob; whether it was there."""
        ...

    def stored(self) -> Iterator[str]:
        """The sha256 of every stored blob (gc lists them, then checks each)."""
        ...

    def mark_fetched(self, origin: str, sha256: str) -> None:
        """Record that ``origin`` (a mirror's stage) fetched this blob from its upstream."""
        ...

    def unmark_fetched(self, origin: str, sha256: str) -> None: ...

    def fetched_by(self, origin: str, sha256: str) -> bool: ...

    def forget_stale_origins(self) -> int:
        """Drop provenance marks of blobs no longer stored (after a gc sweep)."""
        ...

    def clean_temp(self) -> int:
        """Remove temp files left by a crash (at start-up)."""
        ...


@contextmanager
def disk_full_as_out_of_space(what: str) -> Iterator[None]:
    """Turn an ENOSPC/EDQUOT OSError inside the block into OutOfSpace naming ``what``."""
    try:
        yield
    except OSError as e:
        if is_out_of_space(e):
            raise write_failed(what, e) from e
        raise
