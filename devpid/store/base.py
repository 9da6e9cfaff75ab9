"""The storage interface: snapshots of JSON values by key, one serial per committed change.

Everything devpid remembers (users, index configs, releases, file records, cached mirror
pages) is a JSON value under a string key. A write transaction collects changes and commits
them as ONE new serial with ONE changelog entry ``{key: new value or None}``. Page caches,
replication, events and export all derive from that single mechanism, so a backend only has
to implement this small interface (SQLite today; PostgreSQL can follow without touching the
web layer).
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

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
    """Read access to the state at one serial."""

    serial: int

    def get(self, key: str) -> JSON | None: ...

    def items(self, prefix: str) -> list[tuple[str, JSON]]:
        """All (key, value) pairs whose key starts with ``prefix``, sorted by key."""
        ...

    def keys(self, prefix: str) -> list[str]: ...


class WriteTransaction(ReadView, Protocol):
    """Collects changes; ``commit`` gives them the next serial atomically."""

    def set(self, key: str, value: JSON) -> None: ...

    def delete(self, key: str) -> None: ...

    @property
    def changes(self) -> Mapping[str, JSON]: ...


class Store(ReadView, Protocol):
    """A store of JSON values with a serial-numbered changelog."""

    uuid: str

    def transaction(self) -> Iterator[WriteTransaction]:
        """Context manager: yields a transaction, commits on success (if anything changed)."""
        ...

    def apply_serial(self, serial: int, changes: Changes) -> None:
        """Replay a changelog entry with the given serial (replicas, import)."""
        ...

    def changelog(self, serial: int) -> Changes | None: ...

    def changelog_since(self, serial: int, limit: int) -> list[tuple[int, Changes]]: ...

    def lookup_path(self, path: str) -> tuple[str, str] | None:
        """Map a served file path (``user/index/+f/...``) to (key, filename)."""
        ...

    def max_serial(self, prefix: str) -> int:
        """The last serial that changed any key under ``prefix`` (-1 if none)."""
        ...

    def poll_external(self) -> None:
        """Deliver commits other processes made to the commit listeners."""
        ...

    def add_commit_listener(self, listener: CommitListener) -> None: ...

    def close(self) -> None: ...


@contextmanager
def disk_full_as_out_of_space(what: str) -> Iterator[None]:
    """Turn an ENOSPC/EDQUOT OSError inside the block into OutOfSpace naming ``what``."""
    try:
        yield
    except OSError as e:
        if is_out_of_space(e):
            raise write_failed(what, e) from e
        raise
