"""Search by name, summary and description words: SQLite FTS5, kept current by serial.

The search database (``SERVERDIR/web-search.sqlite``) is derived data: it can be deleted at
any time and is rebuilt. Private projects are indexed from the store's changelog: before a
query, every serial since the last indexed one is applied (in the worker pool, through a
read-only connection of its own, so the reactor never walks the store). A mirror's project
list (PyPI's has ~780,000 names) is indexed once per list it fetched, in the background;
queries then read a few rows of the FTS index instead of scanning the list.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpid.domain import keys
from devpid.links import version_key
from devpid.store.base import Store
from devpid.store.sqlite import SQLiteStore

log = Logger()

DB_NAME = "web-search.sqlite"
SCHEMA_VERSION = "1"
MAX_DESCRIPTION = 50_000  # characters of a description that are indexed
MAX_RESULTS = 50
CHANGELOG_BATCH = 100  # changelog entries read at a time (entries carry whole records)
_TOKEN = re.compile(r"[a-z0-9]+")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS private USING fts5(
    name, summary, description, stage UNINDEXED, version UNINDEXED);
CREATE VIRTUAL TABLE IF NOT EXISTS names USING fts5(name, stage UNINDEXED);
"""


class SearchUnavailable(Exception):
    """The search index could not be brought up to date (logged)."""


@dataclass
class Hit:
    name: str
    stage: str
    version: str = ""
    summary: str = ""
    mirror: bool = False


def fts_query(text: str) -> str | None:
    """An FTS5 query matching every word of ``text`` (as a prefix), or None for no words.

    Only ``[a-z0-9]`` tokens reach FTS5, each quoted, so user input cannot inject syntax.
    """
    tokens = _TOKEN.findall(text.lower())[:8]
    if not tokens:
        return None
    return " AND ".join(f'"{t}"*' if len(t) > 1 else f'"{t}"' for t in tokens)


class SearchDB:
    """The blocking half (worker pool only): one writer and one reader connection."""

    def __init__(self, path: Path, store_path: Path) -> None:
        self.path = path
        self.store_path = store_path
        self.write_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._store: Store | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            version = self._get(conn, "schema")
            if version != SCHEMA_VERSION:  # derived data: start again
                conn.executescript("DELETE FROM private; DELETE FROM names; DELETE FROM meta;")
                self._set(conn, "schema", SCHEMA_VERSION)
            self._writer = conn
        return self._writer

    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            self.writer()
            self._reader = self._connect()
        return self._reader

    @staticmethod
    def _get(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- private projects, by serial --------------------------------------------------------
    def catch_up(self, uuid: str) -> int:
        """Apply every serial not indexed yet; returns the serial now indexed."""
        with self.write_lock:
            conn = self.writer()
            if self._store is None:
                self._store = SQLiteStore(self.store_path, readonly=True)
            store = self._store
            target = store.refresh_serial()
            # IMMEDIATE: another process (--workers) catching up waits here, then sees our serial
            conn.execute("BEGIN IMMEDIATE")
            try:
                indexed = self._apply(conn, store, uuid, target)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return indexed

    def _apply(self, conn: sqlite3.Connection, store: Store, uuid: str,
               target: int) -> int:
        """Inside the caller's transaction: index every change since the indexed serial;
        returns the serial indexed now."""
        indexed = int(self._get(conn, "serial") or -1)
        if self._get(conn, "uuid") != uuid:  # a new or another serverdir: start again
            conn.execute("DELETE FROM private")
            indexed = -1
        if indexed >= target:  # (another process may have indexed further already)
            return indexed
        dirty: set[tuple[str, str]] = set()
        gone: set[str] = set()
        if indexed < 0:
            for key in store.keys(keys.PROJECTS):
                parts = keys.parse(key)
                dirty.add((parts.stage, parts.project))
        else:
            since = indexed + 1
            while since <= target:
                entries = store.changelog_since(since, CHANGELOG_BATCH)
                if not entries:
                    break
                for serial, changes in entries:
                    since = serial + 1
                    for key, value in changes.items():
                        parts = keys.parse(key)
                        if parts.kind in ("project", "release") and parts.project:
                            dirty.add((parts.stage, parts.project))
                        elif keys.well_formed(key, ("index",)) and value is None:
                            gone.add(parts.stage)
        for stage in gone:
            conn.execute("DELETE FROM private WHERE stage=?", (stage,))
            conn.execute("DELETE FROM names WHERE stage=?", (stage,))
            conn.execute("DELETE FROM meta WHERE key=?", (f"list:{stage}",))
        for stage, project in dirty:
            self._reindex(conn, store, stage, project)
        self._set(conn, "serial", str(target))
        self._set(conn, "uuid", uuid)
        return target

    @staticmethod
    def _reindex(conn: sqlite3.Connection, store: Store, stage: str,
                 project: str) -> None:
        conn.execute("DELETE FROM private WHERE stage=? AND name=?", (stage, project))
        if store.get(keys.project(stage, project)) is None:
            return
        releases = store.items(keys.release_prefix(stage, project))
        summary = description = version = ""
        if releases:
            key, meta = max(releases, key=lambda kv: version_key(keys.last_part(kv[0])))
            version = keys.last_part(key)
            if isinstance(meta, dict):
                value = meta.get("summary")
                summary = value if isinstance(value, str) else ""
                text = meta.get("description")
                description = text[:MAX_DESCRIPTION] if isinstance(text, str) else ""
        conn.execute(
            "INSERT INTO private(name, summary, description, stage, version) "
            "VALUES (?, ?, ?, ?, ?)", (project, summary, description, stage, version))

    # -- mirror lists -------------------------------------------------------------------------
    def list_marker(self, stage: str) -> str | None:
        with self.read_lock:
            return self._get(self.reader(), f"list:{stage}")

    def index_list(self, stage: str, names_text: str) -> None:
        """Replace the names of mirror ``stage`` with the list (one name per line)."""
        marker = f"{len(names_text)}:{zlib.crc32(names_text.encode())}"
        with self.write_lock:
            conn = self.writer()
            if self._get(conn, f"list:{stage}") == marker:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._get(conn, f"list:{stage}") == marker:  # another process did it
                    conn.execute("ROLLBACK")
                    return
                conn.execute("DELETE FROM names WHERE stage=?", (stage,))
                conn.executemany("INSERT INTO names(name, stage) VALUES (?, ?)",
                                 ((name, stage) for name in names_text.split("\n") if name))
                self._set(conn, f"list:{stage}", marker)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- queries ------------------------------------------------------------------------------
    def query(self, text: str, stages: list[str] | None = None,
              limit: int = MAX_RESULTS) -> list[Hit]:
        """The best hits in ``stages`` (the caller's readable indexes; None: all): filtered
        in SQL before the limit, so hits the caller may not read never crowd out others."""
        match = fts_query(text)
        if match is None:
            return []
        wanted = "-".join(_TOKEN.findall(text.lower()))
        readable = None if stages is None else json.dumps(stages)
        with self.read_lock:
            conn = self.reader()
            private = conn.execute(
                "SELECT name, stage, version, summary FROM private WHERE private MATCH ?3 "
                "AND (?1 IS NULL OR stage IN (SELECT value FROM json_each(?1))) "
                "ORDER BY bm25(private, 10.0, 3.0, 1.0) LIMIT ?2",
                (readable, limit * 4, match)).fetchall()
            mirrored = conn.execute(
                "SELECT name, stage FROM names WHERE names MATCH ?3 "
                "AND (?1 IS NULL OR stage IN (SELECT value FROM json_each(?1))) "
                "ORDER BY rank LIMIT ?2", (readable, limit * 4, match)).fetchall()
        hits = [Hit(n, s, v, su) for n, s, v, su in private]
        hits += [Hit(n, s, mirror=True) for n, s in mirrored]
        # an exact name first, then private projects, then the mirrors' names (stable order)
        hits.sort(key=lambda h: (h.name != wanted, h.mirror))
        return hits[:limit]

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        if self._store is not None:
            self._store.close()


class Search:
    """The reactor half: runs SearchDB's work in the worker pool, one catch-up at a time."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.db = SearchDB(Path(server.settings.serverdir) / DB_NAME, Path(server.store.path))
        self.indexed = -1
        self._waiters: list[Deferred[None]] | None = None
        self._lists: dict[str, str] = {}  # mirror stage -> the names text indexed (same object)
        self.listing: set[str] = set()  # mirror stages whose list is being indexed

    async def current(self) -> None:
        """Index every serial up to the store's current one (one catch-up for all waiters)."""
        for _attempt in range(3):  # a commit may land while we catch up: go again, bounded
            if self.indexed >= self.server.store.serial:
                return
            if self._waiters is None:
                self._waiters = []
                d = self.server.in_thread(self.db.catch_up, self.server.store.uuid)
                d.addBoth(self._caught_up)
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter

    def _caught_up(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Failure):
            log.failure("updating the search index failed", result)
            for waiter in waiters:
                waiter.errback(SearchUnavailable("the search index could not be updated"))
            return
        self.indexed = result
        for waiter in waiters:
            waiter.callback(None)

    def mirror_list(self, stage: str, names_text: str) -> None:
        """Index a mirror's list in the background when it is one not indexed yet."""
        if not names_text or self._lists.get(stage) is names_text or stage in self.listing:
            return
        self.listing.add(stage)

        def finished(result: Any) -> None:
            self.listing.discard(stage)
            if isinstance(result, Failure):
                log.failure("indexing the project list of {stage} failed", result, stage=stage)
                return
            self._lists[stage] = names_text

        self.server.in_thread(self.db.index_list, stage, names_text).addBoth(finished)

    async def query(self, text: str, stages: list[str]) -> list[Hit]:
        await self.current()
        result: list[Hit] = await self.server.in_thread(self.db.query, text, stages)
        return result


