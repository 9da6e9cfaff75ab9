"""Reads for pages that grow with the data (every project of an index), done in the worker
pool through a read-only connection of their own, so the reactor never walks the store."""

from __future__ import annotations

from pathlib import Path

from devpid.domain import keys
from devpid.links import version_key
from devpid.store.sqlite import SQLiteStore


def cached_names(db: Path, stage: str, limit: int) -> tuple[int, list[str]]:
    """How many projects mirror ``stage`` has cached, and the first ``limit`` names."""
    store = SQLiteStore(db, readonly=True)
    try:
        names = [keys.parse(key).project for key in store.keys(keys.mirror_prefix(stage))]
    finally:
        store.close()
    return len(names), names[:limit]


def stage_listing(db: Path, stage: str, limit: int) -> tuple[int, list[tuple[str, str, str]]]:
    """How many projects ``stage`` holds, and (name, latest version, its summary) of the
    first ``limit``."""
    store = SQLiteStore(db, readonly=True)
    try:
        names = [keys.parse(key).project for key in store.keys(keys.project_prefix(stage))]
        rows = []
        for name in names[:limit]:
            releases = store.items(keys.release_prefix(stage, name))
            if not releases:
                rows.append((name, "", ""))
                continue
            key, meta = max(releases, key=lambda kv: version_key(keys.last_part(kv[0])))
            summary = meta.get("summary") if isinstance(meta, dict) else None
            rows.append((name, keys.last_part(key), summary if isinstance(summary, str)
                         else ""))
    finally:
        store.close()
    return len(names), rows
