"""The embedded default store: one SQLite file in WAL mode.

Tables (created and upgraded by store/schema.py): ``kv`` holds the current value of every key
with the serial that last wrote it; ``changelog`` holds, per serial, the JSON
``{key: value-or-null}`` of that commit; ``paths`` is derived (served file path -> key) and
maintained in the same transaction. A commit is one
SQLite transaction, so a kill -9 at any moment leaves either the old or the new serial.

Writes happen on the calling thread (the reactor's); they are small indexed statements and
WAL with ``synchronous=NORMAL`` keeps them fast without risking consistency. Readers in other
processes (export, ``devpid passwd``) never wait for the writer.

The daemon writes with ``async with store.write() as tx`` (devpid/store/writes.py): one write
at a time per process, the commit inline here; PostgresStore commits off the reactor behind
the same API. ``transaction()`` is the synchronous form, for command-line tools.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from devpid.store.base import Changes, CommitListener, StoreError, write_failed
from devpid.store.keys import paths_of
from devpid.store.schema import SCHEMA_VERSION as SCHEMA_VERSION
from devpid.store.schema import refuse_newer_sqlite, upgrade_sqlite
from devpid.store.writes import AsyncWrite, WriteQueue

log = Logger()

DB_NAME = "devpid.sqlite"


def _upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def encode_value(value: Any) -> str:
    """A value as the store writes it: for callers that encode a big value in a worker
    thread and commit it with ``Transaction.set_encoded`` (no encoding on the reactor)."""
    return _dumps(value)


def _private_file(path: Path) -> None:
    """The database holds every bcrypt hash: owner-only (0600), also for databases created
    before this rule. SQLite gives its -wal and -shm files the database file's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        try:
            if extra.stat().st_mode & 0o077:
                extra.chmod(0o600)
        except FileNotFoundError:
            pass


class SQLiteStore:
    """Store implementation over one SQLite database in the server directory."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            _private_file(path)
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._listeners: list[CommitListener] = []
        self.writes = WriteQueue()
        try:
            if readonly:
                refuse_newer_sqlite(self._conn, str(path))
            else:
                old = upgrade_sqlite(self._conn, str(path))  # the steps in store/schema.py
                if 0 < old < SCHEMA_VERSION:
                    log.info("upgraded {path} from schema version {old} to {new}",
                             path=str(path), old=old, new=SCHEMA_VERSION)
                if self._meta("uuid") is None:
                    self._conn.execute("INSERT INTO meta(name, value) VALUES ('uuid', ?)",
                                       (uuidlib.uuid4().hex,))
        except BaseException:
            self._conn.close()
            raise
        self.uuid: str = self._meta("uuid") or ""
        self.serial: int = self._max_serial()
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]

    # -- reading ---------------------------------------------------------------------------
    def _meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def _max_serial(self) -> int:
        row = self._conn.execute("SELECT MAX(serial) FROM changelog").fetchone()
        return -1 if row[0] is None else int(row[0])

    def refresh_serial(self) -> int:
        """Pick up commits made by another process (e.g. ``devpid passwd``)."""
        self.poll_external()
        return self.serial

    def poll_external(self) -> None:
        """Deliver commits made by other processes (server workers, ``devpid passwd``).

        ``PRAGMA data_version`` changes only when another connection committed, so the
        common case costs one tiny statement.
        """
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        self._catch_up(self._max_serial())

    def _catch_up(self, upto: int) -> None:
        """Tell listeners about serials (self.serial, upto] that another process committed."""
        while self.serial < upto:
            entries = self.changelog_since(self.serial + 1, 1000)
            if not entries:
                break
            for serial, changes in entries:
                if serial > upto:
                    return
                self.serial = serial
                self._notify(serial, changes)

    def get(self, key: str) -> Any | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_text(self, key: str) -> str | None:
        """The stored JSON text of ``key``: big values can then be decoded off the reactor."""
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def exists(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM kv WHERE key=?", (key,)).fetchone() is not None

    def serial_of(self, key: str) -> int:
        """The serial that last wrote ``key`` (-1 if it does not exist); reads no value."""
        row = self._conn.execute("SELECT serial FROM kv WHERE key=?", (key,)).fetchone()
        return -1 if row is None else int(row[0])

    def read_apart(self, key: str) -> tuple[Any | None, int]:
        """(value, serial) of ``key`` over a connection of its own: safe in a worker thread
        while the reactor uses the main one (WAL: it sees the last committed state)."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            row = conn.execute("SELECT value, serial FROM kv WHERE key=?", (key,)).fetchone()
        finally:
            conn.close()
        return (None, -1) if row is None else (json.loads(row[0]), int(row[1]))

    def get_with_serial(self, key: str) -> tuple[Any | None, int]:
        row = self._conn.execute("SELECT value, serial FROM kv WHERE key=?", (key,)).fetchone()
        return (None, -1) if row is None else (json.loads(row[0]), int(row[1]))

    def items(self, prefix: str) -> list[tuple[str, Any]]:
        rows = self._conn.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, _upper_bound(prefix)),
        ).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def iter_items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """``items`` one record at a time: a full scan (export, blob gc, start-up indexes)
        holds one decoded value in memory, not the whole store.
        Consume it before writing on this connection; inside ``read_snapshot`` it is
        consistent with every other read there."""
        cur = self._conn.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, _upper_bound(prefix)),
        )
        for key, value in cur:
            yield key, json.loads(value)

    def keys(self, prefix: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, _upper_bound(prefix)),
        ).fetchall()
        return [r[0] for r in rows]

    def max_serial(self, prefix: str) -> int:
        """The last serial that changed any key under ``prefix`` (-1 if none exists)."""
        row = self._conn.execute(
            "SELECT MAX(serial) FROM kv WHERE key >= ? AND key < ?",
            (prefix, _upper_bound(prefix)),
        ).fetchone()
        return -1 if row[0] is None else int(row[0])

    def lookup_path(self, path: str) -> tuple[str, str] | None:
        row = self._conn.execute(
            "SELECT key, filename FROM paths WHERE path=?", (path,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def changelog(self, serial: int) -> Changes | None:
        row = self._conn.execute(
            "SELECT changes FROM changelog WHERE serial=?", (serial,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def changelog_text(self, serial: int) -> str | None:
        """The JSON text of one changelog entry (decode big ones off the reactor)."""
        row = self._conn.execute(
            "SELECT changes FROM changelog WHERE serial=?", (serial,)
        ).fetchone()
        return None if row is None else str(row[0])

    def changelog_raw(self, serial: int) -> tuple[float, str] | None:
        row = self._conn.execute(
            "SELECT timestamp, changes FROM changelog WHERE serial=?", (serial,)
        ).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    def changelog_rows_since(
        self, serial: int, limit: int, inline_max: int
    ) -> list[tuple[int, int, str | None]]:
        """(serial, size, JSON text) of entries from ``serial`` on, unparsed; the text is
        None for entries larger than ``inline_max`` bytes (read those with open_changelog).

        Stored entries are ASCII (``json.dumps`` escapes), so SQLite's length() is bytes.
        """
        rows = self._conn.execute(
            "SELECT serial, length(changes), CASE WHEN length(changes) <= ? THEN changes END"
            " FROM changelog WHERE serial >= ? ORDER BY serial LIMIT ?",
            (inline_max, serial, limit),
        ).fetchall()
        return [(int(s), int(n), c) for s, n, c in rows]

    def open_changelog(self, serial: int) -> BlobChangelogReader | None:
        """A file-like reader of one entry's JSON text, in chunks (never whole in memory).

        Uses its own read-only connection: changelog rows are never modified, so the
        incremental blob handle stays valid while the main connection goes on writing.
        """
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            blob = conn.blobopen("changelog", "changes", serial, readonly=True)
        except sqlite3.OperationalError:
            conn.close()
            return None
        return BlobChangelogReader(conn, blob)

    def changelog_since(self, serial: int, limit: int) -> list[tuple[int, Changes]]:
        rows = self._conn.execute(
            "SELECT serial, changes FROM changelog WHERE serial >= ? ORDER BY serial LIMIT ?",
            (serial, limit),
        ).fetchall()
        return [(int(s), dict(json.loads(c))) for s, c in rows]

    @contextmanager
    def read_snapshot(self) -> Iterator[int]:
        """One read transaction: all reads inside it see the state at the serial it yields.

        For readers that need many statements to agree (export, blob gc) while a writer in
        another process goes on: WAL keeps their snapshot, and the writer never waits.
        """
        self._conn.execute("BEGIN")
        try:
            yield self._max_serial()
        finally:
            self._conn.execute("COMMIT")

    def last_commit_time(self) -> float | None:
        row = self._conn.execute(
            "SELECT timestamp FROM changelog ORDER BY serial DESC LIMIT 1"
        ).fetchone()
        return None if row is None else float(row[0])

    # -- writing ---------------------------------------------------------------------------
    def write(self) -> AsyncWrite[Transaction]:
        """``async with store.write() as tx:`` the daemon's writes: they wait for this
        process's previous write (never for reads), and commit when the block ends."""
        return AsyncWrite(self.writes, self._new_transaction, self._commit_async)

    async def apply_serial_async(
        self, serial: int, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> None:
        """``apply_serial`` after this process's earlier writes (local: committed inline)."""
        await self.writes.lock.acquire()
        try:
            self.apply_serial(serial, changes, encoded)
        finally:
            self.writes.lock.release()

    def _new_transaction(self) -> Transaction:
        return Transaction(self)

    async def _commit_async(self, tx: Transaction) -> int:
        """SQLite is local and fast (~0.1 ms): committed inline, on the reactor."""
        return self._commit(None, dict(tx.pending), tx.encoded)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Collect changes; on a clean exit commit them as the next serial."""
        tx = Transaction(self)
        yield tx
        if tx.pending:
            tx.serial = self._commit(None, dict(tx.pending), tx.encoded)

    def apply_serial(
        self, serial: int, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> None:
        """Replay one changelog entry under exactly this serial (replicas, import);
        ``encoded``: values already encoded off the reactor (``encode_value``)."""
        self._commit(serial, changes, encoded)

    def _commit(
        self, serial: int | None, changes: Changes, encoded: Mapping[str, str] | None = None
    ) -> int:
        # Each value is encoded once (or was, in a worker thread: ``encoded``); the entry is
        # composed from those texts and is exactly _dumps(changes) (sorted keys, same form).
        texts = {key: encoded[key] if encoded and key in encoded else _dumps(value)
                 for key, value in changes.items()}
        entry = "{" + ",".join(f"{json.dumps(key)}:{texts[key]}" for key in sorted(texts)) + "}"
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._max_serial()
            if serial is None:
                serial = current + 1
            elif serial != current + 1:
                raise StoreError(f"cannot apply serial {serial}: store is at serial {current}")
            conn.execute(
                "INSERT INTO changelog(serial, timestamp, changes) VALUES (?, ?, ?)",
                (serial, time.time(), entry),
            )
            for key, value in changes.items():
                if value is None:
                    conn.execute("DELETE FROM paths WHERE key=?", (key,))
                    conn.execute("DELETE FROM kv WHERE key=?", (key,))
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO kv(key, serial, value) VALUES (?, ?, ?)",
                    (key, serial, texts[key]),
                )
                self._replace_paths(key, paths_of(key, value))
            conn.execute("COMMIT")
        except BaseException as e:
            # SQLite may have rolled back already (SQLITE_FULL, I/O errors): a second
            # ROLLBACK would replace the real error with "no transaction is active".
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.failure("rollback after a failed commit failed")
            if isinstance(e, sqlite3.Error):
                raise write_failed("database commit", e, code=503) from e
            raise
        if current > self.serial:
            self._catch_up(current)  # another process committed before us
        self.serial = serial
        self._notify(serial, changes)
        return serial

    def _replace_paths(self, key: str, paths: list[tuple[str, str]]) -> None:
        """Make ``paths`` the rows of ``key``; for a big mirror page only the difference
        is written (a refresh adding one file to 50,000 must not rewrite 50,000 rows)."""
        conn = self._conn
        if len(paths) < 1000:
            conn.execute("DELETE FROM paths WHERE key=?", (key,))
            new = paths
        else:
            old = set(conn.execute("SELECT path, filename FROM paths WHERE key=?", (key,)))
            wanted = set(paths)
            conn.executemany("DELETE FROM paths WHERE path=? AND key=?",
                             [(path, key) for path, _ in old - wanted])
            new = [p for p in paths if p not in old]
        conn.executemany(
            "INSERT OR REPLACE INTO paths(path, key, filename) VALUES (?, ?, ?)",
            [(path, key, filename) for path, filename in new],
        )

    def _notify(self, serial: int, changes: Changes) -> None:
        for listener in list(self._listeners):
            try:
                listener(serial, changes)
            except Exception:
                log.failure("commit listener failed for serial {serial}", serial=serial)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def snapshot(self) -> Iterator[tuple[str, Any]]:
        """All keys and values in one read transaction (consistent at one serial)."""
        cur = self._conn.execute("SELECT key, value FROM kv ORDER BY key")
        for key, value in cur:
            yield key, json.loads(value)

    def close(self) -> None:
        self._conn.close()


class BlobChangelogReader:
    """``read``/``close`` over one changelog entry's bytes (see SQLiteStore.open_changelog)."""

    def __init__(self, conn: sqlite3.Connection, blob: sqlite3.Blob) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._blob = blob
        self.size = len(blob)

    def read(self, size: int = -1) -> bytes:
        return self._blob.read(size)

    def close(self) -> None:
        if self._conn is not None:
            self._blob.close()
            self._conn.close()
            self._conn = None


class Transaction:
    """Pending changes layered over the store; reads see the transaction's own writes."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.pending: dict[str, Any] = {}
        self.encoded: dict[str, str] = {}
        self.serial: int | None = None

    def get(self, key: str) -> Any | None:
        if key in self.pending:
            return self.pending[key]
        return self._store.get(key)

    def items(self, prefix: str) -> list[tuple[str, Any]]:
        merged = dict(self._store.items(prefix))
        for key, value in self.pending.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        return sorted(merged.items())

    def keys(self, prefix: str) -> list[str]:
        return [k for k, _ in self.items(prefix)]

    def set(self, key: str, value: Any) -> None:
        """Set a value; setting an unchanged value records nothing (no empty serials)."""
        if value is None:
            raise ValueError("use delete() to remove a key")
        current = self.get(key)
        if current == value and key not in self.pending:
            return
        self.pending[key] = value
        self.encoded.pop(key, None)

    def set_encoded(self, key: str, value: Any, text: str) -> None:
        """Set a value already encoded (``encode_value(value)``, done off the reactor).

        Unlike ``set`` it does not compare with the stored value: the caller did.
        """
        self.pending[key] = value
        self.encoded[key] = text

    def delete(self, key: str) -> None:
        if key in self.pending or self._store.exists(key):
            self.pending[key] = None
            self.encoded.pop(key, None)

    @property
    def changes(self) -> Mapping[str, Any]:
        return self.pending
