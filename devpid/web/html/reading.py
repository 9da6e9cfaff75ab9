"""Reads for pages that grow with the data (every project of an index), done in the worker
pool through a read-only connection of their own, so the reactor never walks the store."""

from __future__ import annotations

from pathlib import Path

from devpid.links import version_key
from devpid.store.sqlite import SQLiteStore


def cached_names(db: Path, stage: str, limit: int) -> tuple[int, list[str]]:
    """How many projects mirror ``stage`` has cached, and the first ``limit`` names."""
    store = SQLiteStore(db, readonly=True)
    try:
        prefix = f"mirror/{stage}/"
        names = [key[len(prefix):] for key in store.keys(prefix)]
    finally:
        store.close()
    return len(names), names[:limit]


def stage_listing(db: Path, stage: str, limit: int) -> tuple[int, list[tuple[str, str, str]]]:
    """How many projects ``stage`` holds, and (name, latest version, its summary) of the
    first ``limit``."""
    store = SQLiteStore(db, readonly=True)
    try:
        prefix = f"project/{stage}/"
        names = [key[len(prefix):] for key in store.keys(prefix)]
        rows = []
        for name in names[:limit]:
            releases = store.items(f"release/{stage}/{name}/")
            if not releases:
                rows.append((name, "", ""))
                continue
            key, meta = max(releases, key=lambda kv: version_key(kv[0].rsplit("/", 1)[1]))
            summary = meta.get("summary") if isinstance(meta, dict) else None
            rows.append((name, key.rsplit("/", 1)[1], summary if isinstance(summary, str)
                         else ""))
    finally:
        store.close()
    return len(names), rows
