"""Persistent state: the serial-numbered key/value store and the content-addressed blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from devpid.store.base import BlobStore, Store
from devpid.store.blobs import LocalBlobStore
from devpid.store.sqlite import DB_NAME, SQLiteStore

__all__ = ["DB_NAME", "BlobStore", "LocalBlobStore", "SQLiteStore", "Store", "blob_root",
           "is_initialised", "open_store"]

# A server directory on PostgreSQL remembers its database here, so every command run on the
# directory (``devpid passwd``, export, a restart) uses it without being told again.
STORE_URL_FILE = "store.url"


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def remember_store_url(serverdir: Path, url: str) -> None:
    """Record the database of ``serverdir`` (owner-only: the URL may hold a password)."""
    serverdir.mkdir(parents=True, exist_ok=True)
    path = serverdir / STORE_URL_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def store_url(serverdir: Path) -> str | None:
    """The database URL recorded for ``serverdir``; None: its own SQLite file."""
    try:
        return (serverdir / STORE_URL_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


# A server directory whose blobs live elsewhere (``--blobdir``, e.g. a filesystem several
# nodes share) remembers that directory here, so gc, export and cache find the files too.
BLOBDIR_FILE = "blobdir.path"


class BlobDirError(ValueError):
    """A ``--blobdir`` that would lose track of files already stored (nothing was changed)."""


def blob_root(serverdir: Path) -> Path:
    """Where the blobs of ``serverdir`` are: its recorded ``--blobdir``, else ``+blobs``."""
    try:
        text = (serverdir / BLOBDIR_FILE).read_text().strip()
    except FileNotFoundError:
        return serverdir / "+blobs"
    return Path(text) if text else serverdir / "+blobs"


def _holds_blobs(root: Path) -> bool:
    """Whether ``root`` has the ``ab/`` fan-out of stored blobs (not just a temp area)."""
    try:
        return any(len(p.name) == 2 and p.is_dir() for p in root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


def remember_blobdir(serverdir: Path, blobdir: Path) -> Path:
    """Record ``blobdir`` as where ``serverdir`` keeps its blobs; returns it, absolute.

    Switching a server directory that already has blobs somewhere else is refused: the
    records would name files that are not there (move them first, then edit the file).
    """
    blobdir = Path(os.path.abspath(blobdir.expanduser()))
    current = blob_root(serverdir)
    if (serverdir / BLOBDIR_FILE).exists() and current == blobdir:
        return blobdir
    same = current.is_dir() and blobdir.is_dir() and os.path.samefile(current, blobdir)
    if not same and _holds_blobs(current):
        raise BlobDirError(
            f"{serverdir} keeps its files in {current}; move them to {blobdir} and write "
            f"that path into {serverdir / BLOBDIR_FILE} instead of passing --blobdir"
        )
    serverdir.mkdir(parents=True, exist_ok=True)
    blobdir.mkdir(parents=True, exist_ok=True)
    path = serverdir / BLOBDIR_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{blobdir}\n")
    os.replace(tmp, path)
    return blobdir


def _node_temp(blobs: LocalBlobStore, serverdir: Path) -> None:
    """Nodes may share the blob directory (``--blobdir``, or ``+blobs`` as a link to one
    shared directory): each gets a temp area of its own there, so one node's start-up
    clean-up never deletes another's upload in progress."""
    import hashlib
    import socket

    node = hashlib.sha256(f"{socket.gethostname()}:{serverdir}".encode()).hexdigest()[:16]
    blobs.tmpdir = blobs.tmpdir / node
    blobs.tmpdir.mkdir(parents=True, exist_ok=True)


def is_initialised(serverdir: Path) -> bool:
    url = store_url(serverdir)
    if url is not None:
        from devpid.store.postgres import database_initialised

        return database_initialised(url)
    return (serverdir / DB_NAME).is_file()


def open_store(serverdir: Path, *, readonly: bool = False) -> tuple[Store, BlobStore]:
    """Open (creating if needed, unless readonly) the store and blobs of a server directory.

    On PostgreSQL a read-only open reads the node's local view as it is (a running node
    keeps it current); a writable one brings it up to the database first.
    """
    if not readonly:
        serverdir.mkdir(parents=True, exist_ok=True)
    url = store_url(serverdir)
    blobs = LocalBlobStore(blob_root(serverdir))
    if not readonly and (url is not None or (serverdir / BLOBDIR_FILE).exists()):
        _node_temp(blobs, serverdir)
    if url is not None and not readonly:
        from devpid.store.postgres import PostgresStore

        return PostgresStore(url, serverdir / DB_NAME), blobs
    return SQLiteStore(serverdir / DB_NAME, readonly=readonly), blobs


if TYPE_CHECKING:  # mypy proves here that every backend implements the protocols
    from devpid.store.base import ChangelogReader, WriteTransaction
    from devpid.store.postgres import PostgresStore, TrackedTransaction
    from devpid.store.sqlite import BlobChangelogReader, Transaction

    def _backends_implement_the_protocols(
        sqlite: SQLiteStore, postgres: PostgresStore, local: LocalBlobStore, tx: Transaction,
        tracked: TrackedTransaction, reader: BlobChangelogReader,
    ) -> None:
        stores: list[Store] = [sqlite, postgres]
        blobs: BlobStore = local
        transactions: list[WriteTransaction] = [tx, tracked]
        readers: ChangelogReader = reader
        del stores, blobs, transactions, readers
