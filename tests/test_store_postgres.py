"""What only the PostgreSQL store does: several nodes' views of one database, refusing a
commit built on a stale read, schema versioning, and rebuilding a view that is not of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run, tool
from tests.support.pg import requires_pg


def _stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    from devpid.store.postgres import PostgresStore
    from tests.support.pg import fresh_database

    url = fresh_database()
    return url, PostgresStore(url, tmp_path / "a.sqlite"), PostgresStore(url, tmp_path / "b.sqlite")


@requires_pg
def test_a_commit_built_on_a_stale_read_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    from devpid.store.postgres import Conflict

    _, a, b = _stores(tmp_path)
    with a.transaction() as tx:
        tx.set("index/alice/dev", {"bases": []})
    b.catch_up()
    with pytest.raises(Conflict) as raised, b.transaction() as txb:
        config = txb.get("index/alice/dev")
        with a.transaction() as txa:  # another node changes it meanwhile
            txa.set("index/alice/dev", {"bases": ["root/pypi"]})
        txb.set("index/alice/dev", dict(config or {}, title="B's"))
    assert raised.value.code == 409 and "retry" in str(raised.value)
    # nothing of B's was stored; B's view has A's change now, so a retry works
    assert b.serial == 1 and b.get("index/alice/dev") == {"bases": ["root/pypi"]}
    with b.transaction() as txb:
        txb.set("index/alice/dev", dict(txb.get("index/alice/dev") or {}, title="B's"))
    assert txb.serial == 2
    a.catch_up()
    assert a.get("index/alice/dev") == {"bases": ["root/pypi"], "title": "B's"}


@requires_pg
def test_unrelated_concurrent_commits_both_land_gap_free(tmp_path: Path) -> None:
    _, a, b = _stores(tmp_path)
    with b.transaction() as txb:
        txb.set("user/bob", {})
        with a.transaction() as txa:
            txa.set("user/alice", {})
    assert (txa.serial, txb.serial) == (0, 1)
    a.catch_up()
    assert [s for s, _ in a.changelog_since(0, 10)] == [0, 1]
    assert list(a.snapshot()) == list(b.snapshot())


@requires_pg
def test_a_prefix_read_conflicts_with_a_new_key_under_it(tmp_path: Path) -> None:
    from devpid.store.postgres import Conflict

    _, a, b = _stores(tmp_path)
    with pytest.raises(Conflict), b.transaction() as txb:
        assert txb.keys("index/alice/") == []
        with a.transaction() as txa:
            txa.set("index/alice/dev", {})
        txb.set("user/alice", {"indexes": 0})


@requires_pg
def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    import psycopg

    from devpid.store.base import StoreError
    from devpid.store.postgres import PG_SCHEMA_VERSION, PostgresStore

    url, a, b = _stores(tmp_path)
    a.close()
    b.close()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        assert row == (str(PG_SCHEMA_VERSION),)
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this devpid"):
        PostgresStore(url, tmp_path / "a.sqlite")


@requires_pg
def test_a_view_of_another_database_is_rebuilt_from_this_one(tmp_path: Path) -> None:
    from devpid.store import SQLiteStore
    from devpid.store.postgres import PostgresStore

    _, a, _b = _stores(tmp_path)
    with a.transaction() as tx:
        tx.set("user/alice", {})
    other = SQLiteStore(tmp_path / "c.sqlite")
    with other.transaction() as tx:
        tx.set("user/mallory", {})
    other.close()
    c = PostgresStore(a.url, tmp_path / "c.sqlite")
    assert (c.uuid, c.serial, c.keys("user/")) == (a.uuid, 0, ["user/alice"])


def test_an_unreachable_database_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    """Nothing listens on port 1: init and start-up both say so and exit non-zero."""
    url = "postgresql://devpid@127.0.0.1:1/devpid"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    init = run([tool("devpid"), "init", "--serverdir", str(tmp_path / "a"), "--store", url],
               env, check=False)
    start = run([tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir",
                 str(tmp_path / "b"), "--store", url, "--port", "0"], env, check=False)
    for proc in (init, start):
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "cannot connect to the database" in output, output
        assert "Traceback" not in output


@requires_pg
def test_a_commit_waits_boundedly_for_a_stuck_holder_of_the_lock(tmp_path: Path) -> None:
    """Another session holds the head lock and never commits: the commit gives up with a
    503 (nothing stored) instead of blocking the reactor for good."""
    import psycopg

    from devpid.store.base import WriteFailed
    from devpid.store.postgres import PostgresStore
    from tests.support.pg import fresh_database

    url = fresh_database()
    store = PostgresStore(url, tmp_path / "a.sqlite", lock_timeout=0.2)
    with psycopg.connect(url) as stuck:
        stuck.execute("SELECT serial FROM head FOR UPDATE")
        with pytest.raises(WriteFailed) as raised, store.transaction() as tx:
            tx.set("user/alice", {})
        stuck.rollback()
    assert raised.value.code == 503 and "lock" in str(raised.value)
    assert store.serial == -1 and store.get("user/alice") is None
    with store.transaction() as tx:  # the connection is still good afterwards
        tx.set("user/alice", {})
    assert tx.serial == 0


@requires_pg
def test_the_database_holds_the_same_state_and_paths_as_the_view(tmp_path: Path) -> None:
    """PostgreSQL is the record, not only a log: its kv and paths match the node's view,
    also after a big mirror page shrank (only its difference is written)."""
    import psycopg

    url, a, _b = _stores(tmp_path)

    def page(numbers: range) -> dict[str, object]:
        return {"files": [{"path": f"root/pypi/+f/{n:04d}/p-{n}.whl", "filename": f"p-{n}.whl"}
                          for n in numbers]}

    with a.transaction() as tx:
        tx.set("mirror/root/pypi/p", page(range(1500)))
        tx.set("user/alice", {"email": "a@example.org"})
    with a.transaction() as tx:
        tx.set("mirror/root/pypi/p", page(range(300, 1600)))
        tx.delete("user/alice")
    with psycopg.connect(url) as conn:
        kv = conn.execute("SELECT key, serial FROM kv ORDER BY key").fetchall()
        paths = conn.execute("SELECT path FROM paths ORDER BY path").fetchall()
    assert kv == [("mirror/root/pypi/p", 1)]
    assert [p for (p,) in paths] == [f"root/pypi/+f/{n:04d}/p-{n}.whl" for n in range(300, 1600)]


@requires_pg
def test_commits_while_the_database_is_down_are_503s_then_it_reconnects(
    tmp_path: Path,
) -> None:
    import psycopg

    from devpid.store.base import WriteFailed
    from devpid.store.postgres import PostgresStore
    from tests.support.pg import fresh_database

    url = fresh_database()
    store = PostgresStore(url, tmp_path / "a.sqlite")
    from tests.support.pg import PG_URL

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(str(PG_URL), autocommit=True) as admin:  # sessions cut, as by a restart
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s", (name,))
    with store.transaction() as tx:  # nothing was sent on the dead connection: retried
        tx.set("user/bob", {})
    assert tx.serial == 0
    with psycopg.connect(str(PG_URL), autocommit=True) as admin:  # the database goes down
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s", (name,))
        for _ in range(2):  # the broken connection, then a failed reconnect: both 503
            with pytest.raises(WriteFailed) as raised, store.transaction() as tx:
                tx.set("user/alice", {})
            assert raised.value.code == 503 and store.serial == 0
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')  # type: ignore[arg-type]
    with store.transaction() as tx:
        tx.set("user/alice", {})
    assert tx.serial == 1 and store.get("user/alice") == {}


@requires_pg
def test_a_listener_may_commit_while_the_view_catches_up(tmp_path: Path) -> None:
    """The view catches up after the database's commit, not inside its transaction: a
    listener hearing a caught-up serial may commit right there, as on SQLite, and the view
    ends equal to the database."""
    _, a, b = _stores(tmp_path)
    with a.transaction() as tx:
        tx.set("user/alice", {})

    def listener(serial: int, changes: dict[str, object]) -> None:
        if not any(key.startswith("user/echo") for key in changes):  # echoes are not echoed
            with b.transaction() as inner:
                inner.set(f"user/echo-{serial}", {})

    b.add_commit_listener(listener)
    with b.transaction() as tx:  # serial 1; the view catches up serial 0 after it
        tx.set("user/bob", {})
    assert tx.serial == 1
    assert b.get("user/echo-0") == {} and b.get("user/echo-1") == {}
    a.catch_up()
    assert list(a.snapshot()) == list(b.snapshot()) and a.serial == b.serial == 3
