"""Schema versions of both backends and the numbered steps that upgrade one to the next.

A database records its version (SQLite: ``PRAGMA user_version``; PostgreSQL: the
``schema_version`` row of ``meta``). Opening a store (the daemon, ``devpid init``, every
command) brings it to ``SCHEMA_VERSION`` one step at a time, each step in ONE transaction
together with the new version number: a kill -9 mid-upgrade leaves the database at the
version before that step, and the next open does the step again. Processes opening the same
database at once queue on the transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
lock), and each re-reads the version inside it, so a step runs once. A database newer than
this code is refused with one line (an older devpid must not write a schema it does not know).

To change the schema: add a function for the next version to BOTH registries below
(``@sqlite_step(n)`` and ``@postgresql_step(n)``; a step may also rewrite data) and never
edit a step that was released. Version 1 is the schema every store started with.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from devpid.store.base import StoreError

if TYPE_CHECKING:
    import psycopg

# -- version 1, as the first releases created it (never edit: upgrades start from it) ------
_SQLITE_V1_TEXT = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, serial INTEGER NOT NULL, value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changelog (
    serial INTEGER PRIMARY KEY, timestamp REAL NOT NULL, changes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY, key TEXT NOT NULL, filename TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS paths_by_key ON paths (key);
"""
# one statement each (executescript would commit the upgrade's transaction)
SQLITE_V1 = tuple(s.strip() for s in _SQLITE_V1_TEXT.split(";") if s.strip())

POSTGRESQL_V1 = (
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

SqliteStep = Callable[[sqlite3.Connection], None]
PostgresqlStep = Callable[["psycopg.Connection[Any]"], None]

# version n -> the step that turns version n-1 into n
SQLITE_STEPS: dict[int, SqliteStep] = {}
POSTGRESQL_STEPS: dict[int, PostgresqlStep] = {}


Step = TypeVar("Step", SqliteStep, PostgresqlStep)


def _registrar(steps: dict[int, Step], backend: str) -> Callable[[int], Callable[[Step], Step]]:
    """The decorator that files a backend's step under the version it upgrades to."""
    def step_to(version: int) -> Callable[[Step], Step]:
        def register(step: Step) -> Step:
            assert version not in steps, f"two {backend} steps to version {version}"
            steps[version] = step
            return step
        return register
    return step_to


sqlite_step = _registrar(SQLITE_STEPS, "SQLite")
postgresql_step = _registrar(POSTGRESQL_STEPS, "PostgreSQL")


# -- the steps ---------------------------------------------------------------------------------
@sqlite_step(2)
def _sqlite_kv_key_serial(conn: sqlite3.Connection) -> None:
    """A covering index of (key, serial): ``max_serial(prefix)`` and ``keys(prefix)`` read
    small index entries instead of every value under the prefix. ``max_serial("mirror/
    root/pypi/")`` runs for each project-list request of a mirror, over every cached page."""
    conn.execute("CREATE INDEX IF NOT EXISTS kv_key_serial ON kv (key, serial)")


@postgresql_step(2)
def _postgresql_kv_key_serial(conn: psycopg.Connection[Any]) -> None:
    """The same index on the database (nodes read through their SQLite view; this keeps a
    prefix's serial an index-only scan for anything querying the database directly)."""
    conn.execute("CREATE INDEX IF NOT EXISTS kv_key_serial ON kv (key, serial)")


SCHEMA_VERSION = max(SQLITE_STEPS, default=1)
PG_SCHEMA_VERSION = max(POSTGRESQL_STEPS, default=1)
assert sorted(SQLITE_STEPS) == list(range(2, SCHEMA_VERSION + 1)), "SQLite steps have a gap"
assert sorted(POSTGRESQL_STEPS) == list(range(2, PG_SCHEMA_VERSION + 1)), "PG steps: a gap"


def too_new(where: str, version: int, known: int) -> StoreError:
    return StoreError(f"{where} has schema version {version}, newer than this devpid "
                      f"({known}); upgrade devpid")


# -- applying them -----------------------------------------------------------------------------
def sqlite_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade_sqlite(conn: sqlite3.Connection, where: str, *,
                   target: int = SCHEMA_VERSION) -> int:
    """Bring the database of ``conn`` (autocommit mode: ``isolation_level=None``) from
    whatever version it has (0: empty) to ``target``, one transaction per step; returns
    the version it started at. Refuses a database newer than this code."""
    start: int | None = None
    version = sqlite_version(conn)
    if version > SCHEMA_VERSION:
        raise too_new(where, version, SCHEMA_VERSION)
    if version >= target:  # the usual open: no write lock taken
        return version
    while True:
        conn.execute("BEGIN IMMEDIATE")  # the writer's lock: one process upgrades
        try:
            version = sqlite_version(conn)
            if start is None:
                start = version
            if version > SCHEMA_VERSION:
                raise too_new(where, version, SCHEMA_VERSION)
            if version >= target:
                conn.execute("COMMIT")
                return start
            if version == 0:
                for statement in SQLITE_V1:
                    conn.execute(statement)
            else:
                SQLITE_STEPS[version + 1](conn)
            conn.execute(f"PRAGMA user_version={version + 1}")  # in the same transaction
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def refuse_newer_sqlite(conn: sqlite3.Connection, where: str) -> None:
    """For read-only opens (they never upgrade): an older schema still reads the same."""
    version = sqlite_version(conn)
    if version > SCHEMA_VERSION:
        raise too_new(where, version, SCHEMA_VERSION)


_SCHEMA_LOCK = 0x64657670  # pg_advisory_xact_lock key: nodes starting together queue here


def postgresql_version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version; 0 if it holds no devpid store."""
    if conn.execute("SELECT to_regclass('meta')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def upgrade_postgresql(conn: psycopg.Connection[Any], *,
                       target: int = PG_SCHEMA_VERSION) -> int:
    """As ``upgrade_sqlite``, for the database of ``conn`` (an autocommit connection)."""
    start: int | None = None
    version = postgresql_version(conn)
    if version > PG_SCHEMA_VERSION:
        raise too_new("the database", version, PG_SCHEMA_VERSION)
    if version >= target:  # the usual open: no transaction, no wait on the schema lock
        return version
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            version = postgresql_version(conn)
            if start is None:
                start = version
            if version > PG_SCHEMA_VERSION:
                raise too_new("the database", version, PG_SCHEMA_VERSION)
            if version >= target:
                return start
            if version == 0:
                for statement in POSTGRESQL_V1:
                    conn.execute(statement)
            else:
                POSTGRESQL_STEPS[version + 1](conn)
            conn.execute("INSERT INTO meta (name, value) VALUES ('schema_version', %s)"
                         " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                         (str(version + 1),))
