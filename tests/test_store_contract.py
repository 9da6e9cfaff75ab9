"""The store interfaces (devpid.store.base), one suite run against every backend: ``Store``
on SQLite and PostgreSQL, ``BlobStore`` on local files. Every protocol method is used here.

What the web layer, replication, events and export rely on: one serial per commit, a
changelog that replays to the same state, prefix reads, served-path lookup, commit
listeners, per-prefix serials, a stable uuid, and all of it surviving a reopen.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from devpid.store import SQLiteStore
from devpid.store.base import BlobStore, Store, StoreError
from devpid.store.blobs import LocalBlobStore
from devpid.store.sqlite import encode_value
from tests.support.pg import PG_URL, SKIP_REASON, fresh_database

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the (same) store of the backend under test; every store opened is closed."""
    opened: list[Store] = []
    if request.param == "sqlite":
        def opener() -> Store:
            opened.append(SQLiteStore(tmp_path / "devpid.sqlite"))
            return opened[-1]
    else:
        if PG_URL is None:
            pytest.skip(SKIP_REASON)
        from devpid.store.postgres import PostgresStore

        url = fresh_database()

        def opener() -> Store:
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


# -- the daemon's write API: async with store.write() ------------------------------------------
def _writer(store: Store) -> None:
    """On PostgreSQL, commit in the write thread as the daemon does."""
    from twisted.internet import reactor

    start_writer = getattr(store, "start_writer", None)
    if start_writer is not None:
        start_writer(reactor)


@pytest_twisted.ensureDeferred
async def test_async_writes_of_one_process_run_one_at_a_time(open_store: Opener) -> None:
    """Two writes that read and change the same key: the second waits for the first and
    reads its result (on PostgreSQL neither is a 409), reads never wait."""
    from twisted.internet import defer

    store = open_store()
    _writer(store)
    with store.transaction() as tx:
        tx.set("index/u/dev", {"count": 0})
    order: list[str] = []

    async def bump(name: str) -> int | None:
        async with store.write() as tx:
            order.append(name)
            tx.set("index/u/dev", {"count": tx.get("index/u/dev")["count"] + 1})
        return tx.serial

    first = defer.ensureDeferred(bump("first"))
    second = defer.ensureDeferred(bump("second"))
    assert store.get("index/u/dev") is not None  # a read while both are under way
    serials = [await first, await second]
    assert order == ["first", "second"] and serials == [1, 2]
    assert store.get("index/u/dev") == {"count": 2} and store.serial == 2


@pytest_twisted.ensureDeferred
async def test_an_async_write_that_raises_stores_nothing_and_frees_the_lock(
    open_store: Opener,
) -> None:
    store = open_store()
    _writer(store)
    heard: list[int] = []
    store.add_commit_listener(lambda serial, changes: heard.append(serial))
    with pytest.raises(ValueError):
        async with store.write() as tx:
            tx.set("user/alice", {})
            raise ValueError("refused")
    async with store.write() as tx:
        pass  # nothing changed: no serial
    assert tx.serial is None and store.serial == -1 and store.get("user/alice") is None
    async with store.write() as tx:
        tx.set("user/bob", {})
    assert tx.serial == 0 == store.serial and heard == [0]
    assert store.writes.status()["writes"] == {"waiting": 0, "busy": False, "commits": 1}


def test_single_key_reads(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    with store.transaction() as tx:
        tx.set("user/b", {"n": 2})
    assert store.get_text("user/a") == encode_value({"n": 1}) and store.get_text("x") is None
    assert store.exists("user/a") and not store.exists("user/x")
    assert store.get_with_serial("user/b") == ({"n": 2}, 1)
    assert store.get_with_serial("user/x") == (None, -1)
    assert store.serial_of("user/a") == 0 and store.serial_of("user/x") == -1
    assert store.read_apart("user/b") == ({"n": 2}, 1)
    assert store.read_apart("user/x") == (None, -1)


def test_read_apart_works_in_another_thread(open_store: Opener) -> None:
    import threading

    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(store.read_apart("user/a")))
    thread.start()
    thread.join()
    assert got == [({"n": 1}, 0)]


def test_changelog_reads_agree(open_store: Opener) -> None:
    store = open_store()
    assert store.last_commit_time() is None and store.open_changelog(0) is None
    big = {"blob": "x" * 5000}
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    with store.transaction() as tx:
        tx.set("user/big", big)
        tx.delete("user/a")
    text = store.changelog_text(1)
    assert text is not None and json.loads(text) == {"user/big": big, "user/a": None}
    assert store.changelog_text(2) is None
    rows = store.changelog_rows_since(0, 10, inline_max=1000)
    assert [(s, n) for s, n, _ in rows] == [(0, len(store.changelog_text(0) or "")),
                                            (1, len(text))]
    assert rows[0][2] == store.changelog_text(0) and rows[1][2] is None  # too big to inline
    assert store.changelog_rows_since(1, 10, inline_max=10**6)[0][2] == text
    reader = store.open_changelog(1)
    assert reader is not None
    try:
        assert reader.size == len(text)
        chunks = []
        while chunk := reader.read(1000):
            chunks.append(chunk)
    finally:
        reader.close()
    assert b"".join(chunks).decode() == text
    when = store.last_commit_time()
    assert when is not None and abs(when - time.time()) < 60


def test_snapshot_reads_one_serial(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/b", {"n": 2})
        tx.set("user/a", {"n": 1})
    with store.read_snapshot() as serial:
        assert serial == 0
        assert list(store.snapshot()) == [("user/a", {"n": 1}), ("user/b", {"n": 2})]


def test_a_transaction_reports_its_changes_and_serial(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
        tx.set("user/b", {"n": 2})
    with store.transaction() as tx:
        assert tx.serial is None
        tx.set_encoded("user/a", {"n": 3}, encode_value({"n": 3}))
        tx.delete("user/b")
        assert dict(tx.changes) == {"user/a": {"n": 3}, "user/b": None}
        assert tx.items("user/") == [("user/a", {"n": 3})]  # its own writes, deletes too
        assert tx.keys("user/") == ["user/a"] and tx.get("user/b") is None
    assert tx.serial == 1 == store.serial
    assert store.changelog(1) == {"user/a": {"n": 3}, "user/b": None}
    assert store.get_text("user/a") == encode_value({"n": 3})


def test_apply_serial_takes_encoded_values(open_store: Opener) -> None:
    store = open_store()
    store.apply_serial(0, {"user/a": {"n": 1}, "user/b": None},
                       {"user/a": encode_value({"n": 1})})
    assert store.get_with_serial("user/a") == ({"n": 1}, 0)
    assert store.changelog(0) == {"user/a": {"n": 1}, "user/b": None}


def test_another_process_commits_reach_poll_external(open_store: Opener) -> None:
    """E.g. ``devpid passwd`` beside the daemon: the same server directory, opened twice."""
    store = open_store()
    heard: list[int] = []
    store.add_commit_listener(lambda serial, changes: heard.append(serial))
    other = open_store()
    with other.transaction() as tx:
        tx.set("user/a", {"n": 1})
    with other.transaction() as tx:
        tx.set("user/b", {"n": 1})
    store.poll_external()
    assert heard == [0, 1] and store.serial == 1
    with other.transaction() as tx:
        tx.set("user/c", {"n": 1})
    assert store.refresh_serial() == 2 and heard == [0, 1, 2]
    store.poll_external()  # nothing new: nothing heard twice
    assert heard == [0, 1, 2]


def test_path_is_the_sqlite_file_readers_open(open_store: Opener) -> None:
    store = open_store()
    with store.transaction() as tx:
        tx.set("user/a", {"n": 1})
    reader = SQLiteStore(Path(store.path), readonly=True)
    try:
        assert reader.get("user/a") == {"n": 1} and reader.uuid == store.uuid
    finally:
        reader.close()


# -- BlobStore -----------------------------------------------------------------------------------
@pytest.fixture(params=["local"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return LocalBlobStore(tmp_path / "+blobs")


def _put_via_temp(blobs: BlobStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    f, tmp = blobs.new_temp()
    with f:
        f.write(data)
    blobs.commit_temp(tmp, digest)
    blobs.discard(tmp)  # gone already: no error
    return digest


def test_blobs_are_stored_read_and_named_by_digest(blobs: BlobStore) -> None:
    digest = _put_via_temp(blobs, b"hello")
    assert blobs.relpath(digest) == f"{digest[:2]}/{digest[2:4]}/{digest}"
    with pytest.raises(ValueError):
        blobs.relpath("../../etc/passwd")
    assert blobs.exists(digest) and not blobs.exists("0" * 64)
    with blobs.open(digest) as f:
        assert f.read() == b"hello"
    assert blobs.path(digest).read_bytes() == b"hello"
    with pytest.raises(FileNotFoundError):
        blobs.open("0" * 64)
    small = blobs.put_bytes(b"meta")
    assert small == hashlib.sha256(b"meta").hexdigest()
    assert blobs.put_bytes(b"meta") == small  # stored once
    info = blobs.info(small)
    assert info is not None and info[0] == 4 and blobs.info("0" * 64) is None


def test_a_discarded_temp_file_leaves_nothing(blobs: BlobStore) -> None:
    f, tmp = blobs.new_temp()
    with f:
        f.write(b"half an upload")
    blobs.discard(tmp)
    assert list(blobs.stored()) == [] and not tmp.exists()
    f, tmp = blobs.new_temp()  # left by a crash: removed at the next start
    f.close()
    assert blobs.clean_temp() == 1 and not tmp.exists()


def test_reuse_refreshes_the_time_gc_sees(blobs: BlobStore) -> None:
    import os

    digest = blobs.put_bytes(b"old")
    os.utime(blobs.path(digest), (1000, 1000))
    assert blobs.info(digest) == (3, 1000)
    assert blobs.reuse(digest)
    info = blobs.info(digest)
    assert info is not None and info[1] > time.time() - 60
    assert not blobs.reuse("0" * 64)


def test_gc_lists_and_deletes_blobs(blobs: BlobStore) -> None:
    a, b = blobs.put_bytes(b"a"), blobs.put_bytes(b"b")
    blobs.mark_fetched("root/pypi", a)  # provenance marks are not blobs
    f, _tmp = blobs.new_temp()  # nor are temp files
    f.close()
    assert sorted(blobs.stored()) == sorted([a, b])
    assert blobs.delete(a) and not blobs.delete(a)
    assert list(blobs.stored()) == [b] and not blobs.exists(a)


def test_provenance_marks(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"wheel")
    assert not blobs.fetched_by("root/pypi", digest)
    blobs.mark_fetched("root/pypi", digest)
    assert blobs.fetched_by("root/pypi", digest) and not blobs.fetched_by("other/m", digest)
    assert not blobs.fetched_by("root/pypi", "not a digest")
    blobs.unmark_fetched("root/pypi", digest)
    assert not blobs.fetched_by("root/pypi", digest)
    blobs.mark_fetched("root/pypi", digest)
    blobs.delete(digest)
    assert blobs.forget_stale_origins() == 1 and blobs.forget_stale_origins() == 0


def test_this_suite_uses_every_protocol_member() -> None:
    """A member added to a protocol gets a test here (so every backend is held to it)."""
    from devpid.store import base

    source = Path(__file__).read_text()
    for protocol in (base.Store, base.ReadView, base.WriteTransaction, base.ChangelogReader,
                     base.BlobStore):
        names = [*vars(protocol), *vars(protocol).get("__annotations__", {})]
        members = [name for name in names if not name.startswith("_")]
        assert members, protocol
        missing = [name for name in members if f".{name}" not in source]
        assert not missing, f"{protocol.__name__}: no test uses {missing}"


@pytest_twisted.ensureDeferred
async def test_apply_serial_async_records_the_given_serial_after_earlier_writes(
    open_store: Opener,
) -> None:
    """A replica's serials: in order, under exactly the given number, after the process's
    write in progress (on PostgreSQL through the write thread); a wrong serial is refused."""
    from twisted.internet import defer

    store = open_store()
    _writer(store)
    heard: list[int] = []
    store.add_commit_listener(lambda serial, changes: heard.append(serial))

    async def local_write() -> None:
        async with store.write() as tx:
            tx.set("mirror/root/pypi/p", {"local": True})

    first = defer.ensureDeferred(local_write())
    replayed = defer.ensureDeferred(store.apply_serial_async(1, {"user/a": {"n": 1}}))
    await first
    await replayed
    assert store.serial == 1 and heard == [0, 1]
    assert store.get("user/a") == {"n": 1} and store.serial_of("user/a") == 1
    await store.apply_serial_async(2, {"user/b": {"n": 2}, "user/a": None},
                                   {"user/b": '{"n":2}'})
    assert store.get("user/b") == {"n": 2} and store.get("user/a") is None
    with pytest.raises(StoreError):
        await store.apply_serial_async(7, {"user/c": {}})
    assert store.serial == 2 and store.writes.status()["writes"]["busy"] is False
