"""Schema versions: a store made by the first releases (version 1) is upgraded when opened,
with its data intact; every step is one transaction (a kill -9 mid-step leaves version 1);
a database newer than the code is refused with one line; a daemon serves an upgraded
server directory. The version-1 DDL is frozen here, exactly as the first releases wrote it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devpid.store import DB_NAME, SQLiteStore
from devpid.store.base import StoreError
from devpid.store.schema import PG_SCHEMA_VERSION, SCHEMA_VERSION
from tests.conftest import ROOT_PASSWORD, Devpid, client_env, init_serverdir, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.pg import PG_URL, SKIP_REASON, fresh_database, requires_pg
from tests.support.pkgbuild import make_wheel

# devpid/store/sqlite.py's SCHEMA before schema versions, character for character.
SQLITE_V1_DDL = """
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

# devpid/store/postgres.py's PG_SCHEMA before schema versions.
POSTGRESQL_V1_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " serial BIGINT NOT NULL)",
    "INSERT INTO head (id, serial) VALUES (0, -1) ON CONFLICT DO NOTHING",
    'CREATE TABLE IF NOT EXISTS kv (key TEXT COLLATE "C" PRIMARY KEY,'
    " serial BIGINT NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS changelog (serial BIGINT PRIMARY KEY,"
    " timestamp DOUBLE PRECISION NOT NULL, changes TEXT NOT NULL)",
    'CREATE TABLE IF NOT EXISTS paths (path TEXT COLLATE "C" PRIMARY KEY,'
    " key TEXT NOT NULL, filename TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS paths_by_key ON paths (key)",
)

UUID = "0123456789abcdef0123456789abcdef"
FILE_KEY = "file/alice/dev/pkg/1.0/pkg-1.0.tar.gz"
FILE_PATH = "alice/dev/+f/abc/pkg-1.0.tar.gz"

# Three commits, as version-1 code recorded them: (serial, {key: value or None}).
HISTORY: list[tuple[int, dict[str, Any]]] = [
    (0, {"user/alice": {"email": "a@example.org"}, "index/alice/dev": {"type": "stage"}}),
    (1, {FILE_KEY: {"path": FILE_PATH, "filename": "pkg-1.0.tar.gz"}}),
    (2, {"user/alice": {"email": "b@example.org"}, "user/bob": {}}),
]
STATE = {
    "index/alice/dev": (0, {"type": "stage"}),
    FILE_KEY: (1, {"path": FILE_PATH, "filename": "pkg-1.0.tar.gz"}),
    "user/alice": (2, {"email": "b@example.org"}),
    "user/bob": (2, {}),
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def make_v1_sqlite(path: Path, *, history: bool = True) -> None:
    """A database exactly as version-1 code created and filled it."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SQLITE_V1_DDL)
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO meta(name, value) VALUES ('uuid', ?)", (UUID,))
        if history:
            conn.execute("BEGIN")
            for serial, changes in HISTORY:
                conn.execute("INSERT INTO changelog VALUES (?, ?, ?)",
                             (serial, time.time(), _dumps(changes)))
            for key, (serial, value) in STATE.items():
                conn.execute("INSERT INTO kv VALUES (?, ?, ?)", (key, serial, _dumps(value)))
            conn.execute("INSERT INTO paths VALUES (?, ?, ?)",
                         (FILE_PATH, FILE_KEY, "pkg-1.0.tar.gz"))
            conn.execute("COMMIT")
    finally:
        conn.close()


def sqlite_schema(path: Path) -> tuple[int, set[str]]:
    """(user_version, names of the indexes devpid made) of a database file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        names = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()
    return version, names


def assert_history_kept(store: SQLiteStore) -> None:
    assert store.uuid == UUID
    assert store.serial == 2
    for key, (serial, value) in STATE.items():
        assert store.get_with_serial(key) == (value, serial)
    assert store.changelog_since(0, 10) == HISTORY
    assert store.lookup_path(FILE_PATH) == (FILE_KEY, "pkg-1.0.tar.gz")
    assert store.max_serial("user/") == 2 and store.max_serial("index/") == 0
    assert store.keys("user/") == ["user/alice", "user/bob"]


def test_the_code_is_at_version_2() -> None:
    assert SCHEMA_VERSION == 2 and PG_SCHEMA_VERSION == 2


def test_a_v1_sqlite_store_is_upgraded_on_open_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    make_v1_sqlite(path)
    assert sqlite_schema(path) == (1, {"paths_by_key"})
    store = SQLiteStore(path)
    try:
        assert sqlite_schema(path) == (2, {"paths_by_key", "kv_key_serial"})
        assert_history_kept(store)
        with store.transaction() as tx:  # and it goes on from there
            tx.set("user/carol", {})
        assert tx.serial == 3 and store.max_serial("user/") == 3
    finally:
        store.close()
    again = SQLiteStore(path)  # a second open changes nothing
    try:
        assert sqlite_schema(path) == (2, {"paths_by_key", "kv_key_serial"})
        assert again.serial == 3 and again.uuid == UUID
    finally:
        again.close()


def test_a_new_store_is_created_at_the_current_version(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / DB_NAME).close()
    assert sqlite_schema(tmp_path / DB_NAME) == (2, {"paths_by_key", "kv_key_serial"})


def test_max_serial_and_keys_use_the_index(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / DB_NAME)
    try:
        for sql in ("SELECT MAX(serial) FROM kv WHERE key >= ? AND key < ?",
                    "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key"):
            plan = str(store._conn.execute("EXPLAIN QUERY PLAN " + sql, ("a", "b")).fetchall())
            assert "COVERING INDEX kv_key_serial" in plan, plan
    finally:
        store.close()


def test_a_newer_sqlite_store_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    make_v1_sqlite(path)
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StoreError) as refused:
            SQLiteStore(path, readonly=readonly)
        message = str(refused.value)
        assert "\n" not in message
        assert message == (f"{path} has schema version 99, newer than this devpid "
                           f"({SCHEMA_VERSION}); upgrade devpid")
    assert sqlite_schema(path)[0] == 99  # and it was left alone


def test_a_read_only_open_reads_a_v1_store_without_upgrading_it(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    make_v1_sqlite(path)
    store = SQLiteStore(path, readonly=True)
    try:
        assert_history_kept(store)
    finally:
        store.close()
    assert sqlite_schema(path)[0] == 1


KILLED_MID_STEP = """
import os, signal, sys
from pathlib import Path
from devpid.store import schema
from devpid.store.sqlite import SQLiteStore

real = schema.SQLITE_STEPS[2]

def step_then_die(conn):
    real(conn)  # the index is built and the version set next: die as the COMMIT starts
    conn.set_trace_callback(
        lambda sql: sql == "COMMIT" and os.kill(os.getpid(), signal.SIGKILL))

schema.SQLITE_STEPS[2] = step_then_die
SQLiteStore(Path(sys.argv[1]))
"""


def test_a_kill_9_mid_upgrade_leaves_version_1_and_the_next_open_upgrades(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    make_v1_sqlite(path)
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_STEP, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert sqlite_schema(path) == (1, {"paths_by_key"})
    store = SQLiteStore(path)
    try:
        assert sqlite_schema(path) == (2, {"paths_by_key", "kv_key_serial"})
        assert_history_kept(store)
    finally:
        store.close()


def test_a_failing_step_rolls_back_to_the_version_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devpid.store import schema

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE INDEX kv_key_serial ON kv (key, serial)")
        raise RuntimeError("step failed")

    monkeypatch.setitem(schema.SQLITE_STEPS, 2, half_then_fail)
    path = tmp_path / DB_NAME
    make_v1_sqlite(path)
    with pytest.raises(RuntimeError, match="step failed"):
        SQLiteStore(path)
    assert sqlite_schema(path) == (1, {"paths_by_key"})


# -- PostgreSQL ---------------------------------------------------------------------------------
def make_v1_postgresql(url: str) -> None:
    """A database exactly as version-1 code created and filled it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for statement in POSTGRESQL_V1_DDL:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO meta VALUES ('uuid', %s)", (UUID,))
        for serial, changes in HISTORY:
            conn.execute("INSERT INTO changelog VALUES (%s, %s, %s)",
                         (serial, time.time(), _dumps(changes)))
        for key, (serial, value) in STATE.items():
            conn.execute("INSERT INTO kv VALUES (%s, %s, %s)", (key, serial, _dumps(value)))
        conn.execute("INSERT INTO paths VALUES (%s, %s, %s)",
                     (FILE_PATH, FILE_KEY, "pkg-1.0.tar.gz"))
        conn.execute("UPDATE head SET serial = 2")


def postgresql_schema(url: str) -> tuple[str, set[str]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        names = {str(r[0]) for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname NOT LIKE '%%_pkey'")}
    assert row is not None
    return str(row[0]), names


@requires_pg
def test_a_v1_postgresql_store_and_its_v1_view_are_upgraded(tmp_path: Path) -> None:
    from devpid.store.postgres import PostgresStore

    url = fresh_database()
    make_v1_postgresql(url)
    view = tmp_path / DB_NAME
    make_v1_sqlite(view)  # the node's view, as version 1 left it (at the same serial)
    assert postgresql_schema(url) == ("1", {"paths_by_key"})
    store = PostgresStore(url, view)
    try:
        assert postgresql_schema(url) == ("2", {"paths_by_key", "kv_key_serial"})
        assert sqlite_schema(view) == (2, {"paths_by_key", "kv_key_serial"})
        assert_history_kept(store)
        with store.transaction() as tx:
            tx.set("user/carol", {})
        assert tx.serial == 3
    finally:
        store.close()
    other = PostgresStore(url, tmp_path / "other.sqlite")  # a second open; a new node's view
    try:
        assert postgresql_schema(url) == ("2", {"paths_by_key", "kv_key_serial"})
        assert other.serial == 3 and other.get("user/carol") == {}
    finally:
        other.close()


@requires_pg
def test_a_failing_postgresql_step_leaves_version_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devpid.store import schema
    from devpid.store.postgres import PostgresStore

    def half_then_fail(conn: Any) -> None:
        conn.execute("CREATE INDEX kv_key_serial ON kv (key, serial)")
        raise RuntimeError("step failed")

    monkeypatch.setitem(schema.POSTGRESQL_STEPS, 2, half_then_fail)
    url = fresh_database()
    make_v1_postgresql(url)
    with pytest.raises(RuntimeError, match="step failed"):
        PostgresStore(url, tmp_path / DB_NAME)
    assert postgresql_schema(url) == ("1", {"paths_by_key"})


@requires_pg
def test_a_newer_postgresql_store_is_refused_in_one_line(tmp_path: Path) -> None:
    import psycopg

    from devpid.store.postgres import PostgresStore

    url = fresh_database()
    make_v1_postgresql(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError) as refused:
        PostgresStore(url, tmp_path / DB_NAME)
    assert str(refused.value) == (f"the database has schema version 99, newer than this "
                                  f"devpid ({PG_SCHEMA_VERSION}); upgrade devpid")


# -- a daemon on an upgraded server directory ---------------------------------------------------
def downgrade_to_v1(serverdir: Path) -> None:
    """Make a server directory's database what version-1 code left: the same tables,
    without what version 2 added (checked against the frozen DDL)."""
    path = serverdir / DB_NAME
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("DROP INDEX kv_key_serial")
        conn.execute("PRAGMA user_version=1")
        made = sorted(r[0] for r in conn.execute("SELECT sql FROM sqlite_master"
                                                 " WHERE sql IS NOT NULL"))
    finally:
        conn.close()
    frozen = sqlite3.connect(":memory:")
    frozen.executescript(SQLITE_V1_DDL)
    v1 = sorted(r[0] for r in frozen.execute("SELECT sql FROM sqlite_master"
                                             " WHERE sql IS NOT NULL"))
    frozen.close()
    assert made == v1


def downgrade_postgresql_to_v1(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("DROP INDEX kv_key_serial")
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    assert postgresql_schema(url) == ("1", {"paths_by_key"})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_daemon_on_a_v1_server_directory_upgrades_it_and_serves_pip(
    tmp_path: Path, upstream: FakePyPI, backend: str
) -> None:
    url = None
    if backend == "postgresql":
        if PG_URL is None:
            pytest.skip(SKIP_REASON)
        url = fresh_database()
    elif os.environ.get("DEVPID_TEST_STORE") == "postgresql":
        pytest.skip("DEVPID_TEST_STORE=postgresql: the postgresql case runs")
    upstream.publish("schema-mirrored", "1.0")
    serverdir = tmp_path / "server"
    init_serverdir(serverdir, upstream.url, store=url)  # devpid init: the current version
    assert sqlite_schema(serverdir / DB_NAME) == (2, {"paths_by_key", "kv_key_serial"})
    if url is not None:
        assert postgresql_schema(url) == ("2", {"paths_by_key", "kv_key_serial"})
    server = Devpid(serverdir)
    env = client_env(tmp_path)
    server.start()
    try:
        auth = ("root", ROOT_PASSWORD)
        assert server.json("PUT", "/root/dev", auth=auth, json={"bases": ["root/pypi"]}).ok
        wheel = make_wheel(tmp_path / "dist", "schema-private", "1.0")
        run([tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
             "--repository-url", server.url + "/root/dev/", "-u", auth[0], "-p", auth[1],
             str(wheel)], env)
    finally:
        server.stop()
    downgrade_to_v1(serverdir)  # on PostgreSQL: the node's view
    assert sqlite_schema(serverdir / DB_NAME) == (1, {"paths_by_key"})
    if url is not None:
        downgrade_postgresql_to_v1(url)
    server.start()
    try:
        assert sqlite_schema(serverdir / DB_NAME) == (2, {"paths_by_key", "kv_key_serial"})
        assert f"upgraded {serverdir / DB_NAME} from schema version 1 to 2" in server.log()
        if url is not None:
            assert postgresql_schema(url) == ("2", {"paths_by_key", "kv_key_serial"})
            assert "upgraded the database from schema version 1 to 2" in server.log()
        target = tmp_path / "target"
        run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
             server.url + "/root/dev/+simple/", "schema-private", "schema-mirrored"], env)
        assert sorted(p.name for p in target.glob("*.dist-info")) == [
            "schema_mirrored-1.0.dist-info", "schema_private-1.0.dist-info"]
    finally:
        server.stop()


def test_a_daemon_and_the_cli_refuse_a_newer_server_directory_in_one_line(
    tmp_path: Path,
) -> None:
    serverdir = tmp_path / "server"
    serverdir.mkdir()
    make_v1_sqlite(serverdir / DB_NAME)
    conn = sqlite3.connect(str(serverdir / DB_NAME))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    line = (f"{serverdir / DB_NAME} has schema version 99, newer than this devpid "
            f"({SCHEMA_VERSION}); upgrade devpid")
    daemon = subprocess.run(
        [tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir", str(serverdir),
         "--host", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert daemon.returncode != 0
    assert line in daemon.stdout + daemon.stderr
    assert "Traceback" not in daemon.stdout + daemon.stderr
    export = run([tool("devpid"), "export", "--serverdir", str(serverdir),
                  str(tmp_path / "out")], client_env(tmp_path), check=False)
    assert export.returncode != 0 and line in export.stderr, export.stderr
    assert "Traceback" not in export.stderr
