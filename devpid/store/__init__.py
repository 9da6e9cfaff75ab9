"""Persistent state: the serial-numbered key/value store and the content-addressed blobs."""

from __future__ import annotations

from pathlib import Path

from devpid.store.blobs import BlobStore
from devpid.store.sqlite import DB_NAME, SQLiteStore

__all__ = ["DB_NAME", "BlobStore", "SQLiteStore", "is_initialised", "open_store"]


def is_initialised(serverdir: Path) -> bool:
    return (serverdir / DB_NAME).is_file()


def open_store(serverdir: Path, *, readonly: bool = False) -> tuple[SQLiteStore, BlobStore]:
    """Open (creating if needed, unless readonly) the store and blobs of a server directory."""
    if not readonly:
        serverdir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(serverdir / DB_NAME, readonly=readonly), BlobStore(serverdir / "+blobs")
