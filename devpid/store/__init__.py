"""Persistent state: the serial-numbered key/value store and the content-addressed blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from devpid.store.base import BlobStore, Store
from devpid.store.blobs import LocalBlobStore
from devpid.store.sqlite import DB_NAME, SQLiteStore

__all__ = ["DB_NAME", "BlobStore", "LocalBlobStore", "SQLiteStore", "Store", "is_initialised",
           "open_store"]

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


def _node_temp(blobs: LocalBlobStore, serverdir: Path) -> None:
    """Nodes may share ``+blobs`` (a link to one shared directory): each gets a temp area of
    its own there, so one node's start-up clean-up never deletes another's upload."""
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
    blobs = LocalBlobStore(serverdir / "+blobs")
    if url is not None and not readonly:
        from devpid.store.postgres import PostgresStore

        _node_temp(blobs, serverdir)
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
