"""PostgreSQL as the system of record; each node serves reads from a local SQLite view.

Several devpid nodes share one database. Each keeps ``devpid.sqlite`` in its server
directory as a copy of the database applied serial by serial, and serves every read from it:
the reactor never waits on the network to read, and the code that opens that file read-only
(search, blob gc, cache eviction) works unchanged. ``PostgresStore`` therefore *is* a
``SQLiteStore`` (the view) whose commits go through PostgreSQL first.

A commit is one PostgreSQL transaction: lock the single ``head`` row (every commit of every
node queues there, so serials are gap-free and totally ordered; a rolled-back commit uses no
serial, unlike a sequence), bring the view up to head, refuse with ``Conflict`` if a serial
the transaction did not see changed a key it read or wrote, else write changelog, kv and
paths at head+1, NOTIFY, commit, and apply the entry to the view under that serial. Other
nodes' commits reach the view through ``PostgresFollower`` (LISTEN/NOTIFY in a thread).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from twisted.logger import Logger

from devpid.store.base import Changes, StoreError, WriteFailed, write_failed
from devpid.store.keys import paths_of
from devpid.store.sqlite import SCHEMA, SCHEMA_VERSION, SQLiteStore, Transaction, encode_value

log = Logger()

PG_SCHEMA_VERSION = 1
LOCK_TIMEOUT = 5.0  # seconds a commit waits for another node's commit before a 503
CHANNEL = "devpid_commits"
_SCHEMA_LOCK = 0x64657670  # pg_advisory_xact_lock key: nodes starting together create it once

PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " serial BIGINT NOT NULL)",
    "INSERT INTO head (id, serial) VALUES (0, -1) ON CONFLICT DO NOTHING",
    # COLLATE "C": prefix ranges must order keys by code point, as SQLite does.
    'CREATE TABLE IF NOT EXISTS kv (key TEXT COLLATE "C" PRIMARY KEY,'
    " serial BIGINT NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS changelog (serial BIGINT PRIMARY KEY,"
    " timestamp DOUBLE PRECISION NOT NULL, changes TEXT NOT NULL)",
    'CREATE TABLE IF NOT EXISTS paths (path TEXT COLLATE "C" PRIMARY KEY,'
    " key TEXT NOT NULL, filename TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS paths_by_key ON paths (key)",
)

# (serial, changes, each value's stored JSON text): decoded where it is fetched (a thread).
Entry = tuple[int, Changes, dict[str, str]]


class Conflict(WriteFailed):
    """Another node committed a change to a key this transaction read or wrote, after the
    state it read: nothing was stored, and doing the request again will see the new state."""

    code = 409


def connect(url: str, lock_timeout: float = LOCK_TIMEOUT) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit), failing fast when unreachable.

    The commit runs on the reactor: a node that holds the head lock and hangs must not stop
    every other node, so waiting for the lock, any statement and an idle open transaction
    are all bounded (the server aborts the laggard; the waiter answers 503).
    """
    ms = int(lock_timeout * 1000)
    options = (f"-c lock_timeout={ms} -c statement_timeout={6 * ms}"
               f" -c idle_in_transaction_session_timeout={6 * ms}")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, options=options,
                               keepalives=1, keepalives_idle=30)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to the database: {e}") from e


def database_initialised(url: str) -> bool:
    """Whether the database holds a devpid store with at least one commit."""
    with connect(url) as conn:
        if conn.execute("SELECT to_regclass('head')").fetchone() == (None,):
            return False
        row = conn.execute("SELECT serial FROM head WHERE id = 0").fetchone()
        return row is not None and int(row[0]) >= 0


def ensure_schema(conn: psycopg.Connection[Any]) -> str:
    """Create the tables if missing and record the schema version; returns the store uuid."""
    import uuid as uuidlib

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in PG_SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', %s)",
                         (str(PG_SCHEMA_VERSION),))
        elif int(row[0]) > PG_SCHEMA_VERSION:
            raise StoreError(f"the database has schema version {row[0]}, newer than this "
                             f"devpid ({PG_SCHEMA_VERSION}); upgrade devpid")
        conn.execute("INSERT INTO meta VALUES ('uuid', %s) ON CONFLICT DO NOTHING",
                     (uuidlib.uuid4().hex,))
        found = conn.execute("SELECT value FROM meta WHERE name = 'uuid'").fetchone()
    assert found is not None
    return str(found[0])


def fetch_entries(conn: psycopg.Connection[Any], after: int, limit: int) -> list[Entry]:
    """Changelog entries after serial ``after``, decoded (call it off the reactor)."""
    rows = conn.execute(
        "SELECT serial, changes FROM changelog WHERE serial > %s ORDER BY serial LIMIT %s",
        (after, limit),
    ).fetchall()
    entries: list[Entry] = []
    for serial, text in rows:
        changes = dict(json.loads(text))
        entries.append((int(serial), changes, {key: encode_value(value)
                                               for key, value in changes.items()
                                               if value is not None}))
    return entries


def _compose(texts: Mapping[str, str]) -> str:
    """The changelog entry from its values' texts: exactly what SQLiteStore stores."""
    return "{" + ",".join(f"{json.dumps(key)}:{texts[key]}" for key in sorted(texts)) + "}"


def _view_matches(path: Path, uuid: str, head: int) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'uuid'").fetchone()
            serial = conn.execute("SELECT MAX(serial) FROM changelog").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == uuid and (serial is None or int(serial) <= head)


def prepare_view(path: Path, uuid: str, head: int) -> None:
    """Make ``path`` a view of the database with ``uuid``: a view of another database (or
    one ahead of it: the database was restored) is replaced by an empty one to fill."""
    if path.exists():
        if _view_matches(path, uuid, head):
            return
        log.warn("{path} is not a view of this database; rebuilding it", path=str(path))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # bcrypt hashes: owner only
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta(name, value) VALUES ('uuid', ?)", (uuid,))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        conn.close()


class PostgresStore(SQLiteStore):
    """The store on PostgreSQL, read through the node's SQLite view at ``path``."""

    def __init__(self, url: str, path: Path, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self._writes_sent = False
        self._committing = False
        self._pg = connect(url, lock_timeout)
        try:
            pg_uuid = ensure_schema(self._pg)
            prepare_view(path, pg_uuid, self._head(self._pg))
        except psycopg.Error as e:
            self._pg.close()
            raise StoreError(f"cannot open the database: {e}") from e
        super().__init__(path)
        self.catch_up()

    @staticmethod
    def _head(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT serial FROM head WHERE id = 0").fetchone()
        return -1 if row is None else int(row[0])

    def _connection(self) -> psycopg.Connection[Any]:
        if self._pg.closed or self._pg.broken:
            self._pg = connect(self.url, self.lock_timeout)
        return self._pg

    # -- keeping the view current ----------------------------------------------------------
    def catch_up(self) -> int:
        """Apply, here and now, what the database has and the view lacks (start-up and
        command-line tools; a running daemon has PostgresFollower do it off the reactor)."""
        conn = self._connection()
        while entries := fetch_entries(conn, self.serial, 1000):
            before = self.serial
            self.apply_entries(entries)
            if self.serial == before:
                break
        return self.serial

    def apply_entries(self, entries: list[Entry]) -> None:
        """Apply the database's entries to the view in serial order (ones it has already
        are skipped; a gap stops it, the next fetch fills it). Listeners hear each one."""
        for serial, changes, encoded in entries:
            if serial <= self.serial:
                continue
            if serial != self.serial + 1:
                return
            self._apply_local(serial, changes, encoded)

    def _apply_local(self, serial: int, changes: Changes, encoded: Mapping[str, str]) -> None:
        """Apply one of the database's serials to the view. Another process on this server
        directory (``devpid passwd`` or ``cache prune`` beside the daemon) may have written
        it there first, with the same content: then the listeners hear that copy."""
        try:
            super()._commit(serial, changes, encoded)
        except StoreError:
            self._catch_up(self._max_serial())
            if self.serial < serial:
                raise

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = TrackedTransaction(self)
        yield tx
        if tx.pending:
            tx.serial = self._commit_remote(None, dict(tx.pending), tx.encoded, tx)

    def apply_serial(
        self, serial: int, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> None:
        """Record one entry under exactly this serial (import, a replica of a primary)."""
        self._commit_remote(serial, changes, encoded, None)

    def _commit_remote(self, serial: int | None, changes: Changes,
                       encoded: Mapping[str, str] | None, tx: TrackedTransaction | None) -> int:
        texts = {key: encoded[key] if encoded and key in encoded else encode_value(value)
                 for key, value in changes.items() if value is not None}
        entry = _compose({key: texts.get(key, "null") for key in changes})
        if self._committing:  # a listener hearing a caught-up serial, inside the lock
            raise StoreError("a commit listener committed during a commit: defer it "
                             "(callLater) so it does not nest in the database transaction")
        self._committing = True
        try:
            serial = self._commit_tries(serial, changes, texts, entry, tx)
        finally:
            self._committing = False
        try:  # after the database's commit, as SQLiteStore notifies after its own
            self._apply_local(serial, changes, texts)
        except Exception:  # it is recorded: the follower's next poll applies it
            log.failure("applying serial {serial} to the local view failed", serial=serial)
        return serial

    def _commit_tries(self, serial: int | None, changes: Changes, texts: Mapping[str, str],
                      entry: str, tx: TrackedTransaction | None) -> int:
        for attempt in (1, 2):
            try:
                conn = self._connection()
            except StoreError as e:  # the database is down: a 503 (nothing stored), not a 500
                raise WriteFailed(str(e)) from e
            self._writes_sent = False
            try:
                serial = self._commit_once(conn, serial, changes, texts, entry, tx)
                break
            except psycopg.OperationalError as e:
                # A connection lost since the last commit (the database restarted) fails
                # on the first statement, before any write was sent: once more is safe.
                if attempt == 1 and conn.broken and not self._writes_sent:
                    continue
                raise write_failed("database commit", e, code=503) from e
            except psycopg.Error as e:
                raise write_failed("database commit", e, code=503) from e
        assert serial is not None
        return serial

    def _commit_once(self, conn: psycopg.Connection[Any], serial: int | None, changes: Changes,
                     texts: Mapping[str, str], entry: str,
                     tx: TrackedTransaction | None) -> int:
        """One try of the commit transaction; returns the serial it committed."""
        with conn.transaction():
            row = conn.execute("SELECT serial FROM head WHERE id = 0 FOR UPDATE").fetchone()
            head = int(row[0]) if row else -1
            while self.serial < head:  # the view must be at head to judge conflicts
                before = self.serial
                self.apply_entries(fetch_entries(conn, self.serial, 1000))
                if self.serial == before:
                    raise StoreError(f"the view cannot reach serial {head}")
            if tx is not None:
                self._refuse_conflicts(tx)
            if serial is None:
                serial = head + 1
            elif serial != head + 1:
                raise StoreError(f"cannot apply serial {serial}: store is at serial {head}")
            self._writes_sent = True
            with conn.pipeline():  # the writes go in one round trip, not one each
                self._write(conn, serial, changes, texts, entry)
        return serial

    def _refuse_conflicts(self, tx: TrackedTransaction) -> None:
        """Conflict if a serial after the one ``tx`` started at touched what it read/wrote."""
        since = tx.base + 1
        while entries := self.changelog_since(since, 1000):
            for entry_serial, entry_changes in entries:
                for key in entry_changes:
                    if tx.touched(key):
                        raise Conflict(f"concurrent change of {key!r} (serial {entry_serial}), "
                                       "retry")
            since = entries[-1][0] + 1

    def _write(self, conn: psycopg.Connection[Any], serial: int, changes: Changes,
               texts: Mapping[str, str], entry: str) -> None:
        conn.execute("INSERT INTO changelog (serial, timestamp, changes) VALUES (%s, %s, %s)",
                     (serial, time.time(), entry))
        deleted = [key for key, value in changes.items() if value is None]
        if deleted:
            conn.execute("DELETE FROM paths WHERE key = ANY(%s)", (deleted,))
            conn.execute("DELETE FROM kv WHERE key = ANY(%s)", (deleted,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO kv (key, serial, value) VALUES (%s, %s, %s) ON CONFLICT (key)"
                " DO UPDATE SET serial = EXCLUDED.serial, value = EXCLUDED.value",
                [(key, serial, text) for key, text in texts.items()],
            )
            for key in texts:
                self._replace_pg_paths(cur, key, paths_of(key, changes[key]))
        conn.execute("UPDATE head SET serial = %s WHERE id = 0", (serial,))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(serial)))

    @staticmethod
    def _replace_pg_paths(cur: psycopg.Cursor[Any], key: str,
                          paths: list[tuple[str, str]]) -> None:
        """As SQLiteStore._replace_paths: a big mirror page writes only its difference."""
        if len(paths) < 1000:
            cur.execute("DELETE FROM paths WHERE key = %s", (key,))
            new = paths
        else:
            cur.execute("SELECT path, filename FROM paths WHERE key = %s", (key,))
            old = {(str(p), str(f)) for p, f in cur.fetchall()}
            gone = [path for path, _ in old - set(paths)]
            if gone:
                cur.execute("DELETE FROM paths WHERE key = %s AND path = ANY(%s)", (key, gone))
            new = [p for p in paths if p not in old]
        if new:
            cur.executemany(
                "INSERT INTO paths (path, key, filename) VALUES (%s, %s, %s) ON CONFLICT (path)"
                " DO UPDATE SET key = EXCLUDED.key, filename = EXCLUDED.filename",
                [(path, key, filename) for path, filename in new],
            )

    def close(self) -> None:
        super().close()
        self._pg.close()


class TrackedTransaction(Transaction):
    """A Transaction that remembers what it read, to detect a concurrent change at commit."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store)
        self.base = store.serial
        self.read: set[str] = set()
        self.prefixes: set[str] = set()

    def touched(self, key: str) -> bool:
        return (key in self.read or key in self.pending
                or any(key.startswith(prefix) for prefix in self.prefixes))

    def get(self, key: str) -> Any | None:
        self.read.add(key)
        return super().get(key)

    def items(self, prefix: str) -> list[tuple[str, Any]]:
        self.prefixes.add(prefix)
        return super().items(prefix)

    def delete(self, key: str) -> None:
        self.read.add(key)
        super().delete(key)
