"""The store interface, one suite run against every backend (SQLite and PostgreSQL).

What the web layer, replication, events and export rely on: one serial per commit, a
changelog that replays to the same state, prefix reads, served-path lookup, commit
listeners, per-prefix serials, a stable uuid, and all of it surviving a reopen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devpid.store import SQLiteStore
from devpid.store.base import StoreError
from tests.support.pg import PG_URL, SKIP_REASON, fresh_database

Opener = Callable[[], SQLiteStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the (same) store of the backend under test; every store opened is closed."""
    opened: list[SQLiteStore] = []
    if request.param == "sqlite":
        def opener() -> SQLiteStore:
            opened.append(SQLiteStore(tmp_path / "devpid.sqlite"))
            return opened[-1]
    else:
        if PG_URL is None:
            pytest.skip(SKIP_REASON)
        from devpid.store.postgres import PostgresStore

        url = fresh_database()

        def opener() -> SQLiteStore:
            opened.append(PostgresStore(url, tmp_path / "devpid.sqlite"))
            return opened[-1]
    yield opener
    for store in opened:
        store.close()


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "filename": path.rsplit("/", 1)[-1], "sha256": "ab" * 32}


def test_each_commit_is_the_next_serial_and_unchanged_writes_none(open_store: Opener) -> None:
    store = open_store()
    assert store.serial == -1
    with store.transaction() as tx:
        tx.set("user/alice", {"email": "a@example.org"})
        tx.set("user/bob", {})
    assert tx.serial == 0 == store.serial
    with store.transaction() as tx:
        tx.set("user/alice", {"email": "a@example.org"})  # the same value: no serial
    assert tx.serial is None and store.serial == 0
    with store.transaction() as tx:
        tx.delete("user/bob")
        tx.delete("user/nobody")  # absent: nothing to record
    assert store.serial == 1
    assert store.changelog(0) == {"user/alice": {"email": "a@example.org"}, "user/bob": {}}
    assert store.changelog(1) == {"user/bob": None}
    assert store.changelog(2) is None
    assert [s for s, _ in store.changelog_since(0, 10)] == [0, 1]
    assert store.get("user/bob") is None and store.get_with_serial("user/alice")[1] == 0


def test_reads_in_a_transaction_see_its_own_writes(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
        assert tx.get("user/a") == {"n": 1}
        assert tx.keys("user/") == ["user/a"]
    assert store.get("user/a") == {"n": 1}


def test_prefix_items_and_keys_are_sorted_and_bounded(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        for key in ("index/a/z", "index/a/b", "index/ab/c", "index/a", "user/a"):
            tx.set(key, {"k": key})
    assert store.keys("index/a/") == ["index/a/b", "index/a/z"]
    assert [k for k, _ in store.items("index/")] == [
        "index/a", "index/a/b", "index/a/z", "index/ab/c"]
    assert store.items("index/a/")[0] == ("index/a/b", {"k": "index/a/b"})
    assert store.keys("nothing/") == []


def test_iter_items_streams_what_items_returns(open_store: Opener) -> None:
    """Full scans (export, blob gc, the mirror-cache index) read one record at a time."""
    store = open_store()
    with store.transaction() as tx:
        for n in range(50):
            tx.set(f"file/u/i/p{n:02d}/f", {"n": n})
        tx.set("files/x", {"n": -1})
    streamed = store.iter_items("file/")
    assert not isinstance(streamed, list)
    assert list(streamed) == store.items("file/")
    assert len(store.items("file/")) == 50
    assert list(store.iter_items("nothing/")) == []


def test_lookup_path_follows_file_records(open_store: Opener) -> None:
    store = open_store()
    key = "file/alice/dev/pkg/pkg-1.0.tar.gz"
    with store.transaction() as tx:
        tx.set(key, _file("alice/dev/+f/abc/pkg-1.0.tar.gz"))
    assert store.lookup_path("alice/dev/+f/abc/pkg-1.0.tar.gz") == (key, "pkg-1.0.tar.gz")
    with store.transaction() as tx:
        tx.delete(key)
    assert store.lookup_path("alice/dev/+f/abc/pkg-1.0.tar.gz") is None


def test_max_serial_is_per_prefix(open_store: Opener) -> None:
    store = open_store()
    assert store.max_serial("index/") == -1
    with store.transaction() as tx:
        tx.set("index/a/dev", {})
    with store.transaction() as tx:
        tx.set("user/a", {})
    assert store.max_serial("index/") == 0 and store.max_serial("user/") == 1


def test_commit_listeners_hear_every_serial_once(open_store: Opener) -> None:
    store = open_store()
    heard: list[tuple[int, dict[str, Any]]] = []
    store.add_commit_listener(lambda serial, changes: heard.append((serial, dict(changes))))
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    store.apply_serial(1, {"user/b": {"n": 2}})
    assert heard == [(0, {"user/a": {"n": 1}}), (1, {"user/b": {"n": 2}})]


def test_apply_serial_takes_only_the_next_serial(open_store: Opener) -> None:
    store = open_store()
    store.apply_serial(0, {"user/a": {"n": 1}})
    with pytest.raises(StoreError):
        store.apply_serial(5, {"user/b": {}})
    with pytest.raises(StoreError):
        store.apply_serial(0, {"user/b": {}})
    assert store.serial == 0 and store.get("user/b") is None


def test_changelog_replays_to_the_same_state(open_store: Opener, tmp_path: Path) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
        tx.set("file/a/dev/p/p-1.zip", _file("a/dev/+f/1/p-1.zip"))
    with store.transaction() as tx:
        tx.set("user/a", {"n": 2})
        tx.delete("file/a/dev/p/p-1.zip")
    copy = SQLiteStore(tmp_path / "copy.sqlite")
    try:
        for serial, changes in store.changelog_since(0, 100):
            copy.apply_serial(serial, changes)
        assert list(copy.snapshot()) == list(store.snapshot())
        assert copy.lookup_path("a/dev/+f/1/p-1.zip") is None
    finally:
        copy.close()


def test_reopen_keeps_state_serial_and_uuid(open_store: Opener) -> None:
    store = open_store()
    assert store.uuid
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    uuid = store.uuid
    store.close()
    again = open_store()
    assert (again.uuid, again.serial, again.get("user/a")) == (uuid, 0, {"n": 1})
    with again.transaction() as tx:
        tx.set("user/a", {"n": 2})
    assert tx.serial == 1


def test_a_big_mirror_page_keeps_exactly_its_current_paths(open_store: Opener) -> None:
    """Above 1,000 files only the difference is written: what is dropped must go too."""
    store = open_store()

    def page(numbers: range) -> dict[str, Any]:
        return {"files": [{"path": f"root/pypi/+f/{n:04d}/p-{n}.whl", "filename": f"p-{n}.whl"}
                          for n in numbers]}

    with store.transaction() as tx:
        tx.set("mirror/root/pypi/p", page(range(1500)))
    with store.transaction() as tx:
        tx.set("mirror/root/pypi/p", page(range(300, 1600)))
    assert store.lookup_path("root/pypi/+f/0299/p-299.whl") is None
    assert store.lookup_path("root/pypi/+f/1599/p-1599.whl") == ("mirror/root/pypi/p",
                                                                 "p-1599.whl")
    reopened = open_store()
    assert reopened.lookup_path("root/pypi/+f/0300/p-300.whl") == ("mirror/root/pypi/p",
                                                                   "p-300.whl")
