"""Deleting frees the disk: the blob sweep removes stored files no record needs, and never one
that is still needed, shared, or in the middle of being written.

End to end: real twine uploads, real deletions (devpi-client and the JSON API), the sweep run
by the daemon's own service and by ``devpid gc`` while the daemon runs, then pip still
installing everything that is left."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from devpid.blobgc import (
    FIRST_SWEEP_DELAY,
    RETRY_START,
    BlobGCService,
    SweepReport,
    live_blobs,
    read_live_from,
    stored_blobs,
    sweep,
)
from devpid.store import DB_NAME, keys, open_store
from tests.conftest import Devpid, client_env, run, tool, twine_upload
from tests.support.pkgbuild import make_wheel
from tests.support.polling import wait_for
from tests.test_private_index import make_index, make_user, pip_download, upload_ok

OLD = time.time() - 10 * 86400


def _blob(blobs: Any, data: bytes, *, mtime: float | None = OLD) -> str:
    digest = blobs.put_bytes(data)
    if mtime is not None:
        os.utime(blobs.path(digest), (mtime, mtime))
    return digest


def _file_record(sha: str, meta: str | None = None) -> dict[str, Any]:
    return {"filename": "a-1-py3-none-any.whl", "path": "u/i/+f/abc/def/a-1-py3-none-any.whl",
            "sha256": sha, "metadata_sha256": meta, "size": 1}


# -- the sweep itself ---------------------------------------------------------------------------
def test_sweep_keeps_what_records_name_and_removes_the_rest(tmp_path: Path) -> None:
    store, blobs = open_store(tmp_path / "s")
    wheel, meta, doc = _blob(blobs, b"wheel"), _blob(blobs, b"meta"), _blob(blobs, b"doc")
    mirrored, mirrored_meta = _blob(blobs, b"mirror file"), _blob(blobs, b"mirror meta")
    orphan, young = _blob(blobs, b"orphan" * 1000), _blob(blobs, b"young", mtime=None)
    (blobs.tmpdir / "in-upload").write_bytes(b"half an upload")
    (blobs.root / "ab").mkdir(exist_ok=True)
    (blobs.root / "ab" / "README").write_text("not a blob")  # unknown files are left alone
    with store.transaction() as tx:
        tx.set("file/u/i/a/a-1-py3-none-any.whl", _file_record(wheel, meta))
        tx.set("doc/u/i/a/1", {"filename": "a-1.doc.zip", "path": "u/i/+doc/a/1", "sha256": doc})
        tx.set("mirror/root/pypi/b", {"name": "b", "files": [
            {"filename": "b-1.whl", "path": "root/pypi/+f/x/y/b-1.whl",
             "hashes": {"sha256": mirrored.upper()}, "core_metadata": {"sha256": mirrored_meta}},
            {"filename": "b-2.whl", "path": "root/pypi/+f/x/z/b-2.whl", "hashes": {}},
        ]})
    # the mirror's blobs count only once root/pypi fetched them from its own upstream
    assert live_blobs(store, blobs) == {wheel, meta, doc}
    blobs.mark_fetched("root/pypi", mirrored)
    blobs.mark_fetched("root/pypi", mirrored_meta)
    blobs.mark_fetched("other/mirror", orphan)  # another mirror's fetch keeps nothing here
    assert live_blobs(store, blobs) == {wheel, meta, doc, mirrored, mirrored_meta}
    assert len(list(stored_blobs(blobs.root))) == 7

    dry = sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME), dry_run=True)
    assert (dry.scanned, dry.live, dry.young, dry.removed) == (7, 5, 1, 1)
    assert dry.freed_bytes == 6000 and blobs.exists(orphan)
    assert "would remove 1" in dry.summary()

    report = sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME))
    assert (report.removed, report.serial, report.errors) == (1, store.serial, [])
    assert not blobs.exists(orphan)
    assert all(blobs.exists(d) for d in (wheel, meta, doc, mirrored, mirrored_meta, young))
    assert (blobs.tmpdir / "in-upload").exists() and (blobs.root / "ab" / "README").exists()
    # once its record is deleted, the wheel (and its metadata) goes at the next sweep
    with store.transaction() as tx:
        tx.delete("file/u/i/a/a-1-py3-none-any.whl")
    assert sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME)).removed == 2
    assert not blobs.exists(wheel) and not blobs.exists(meta) and blobs.exists(doc)
    store.close()


def test_a_blob_shared_by_two_records_stays_until_both_are_gone(tmp_path: Path) -> None:
    store, blobs = open_store(tmp_path / "s")
    shared = _blob(blobs, b"same bytes uploaded to two indexes")
    with store.transaction() as tx:
        tx.set("file/u/dev/a/a-1-py3-none-any.whl", _file_record(shared))
        tx.set("file/u/prod/a/a-1-py3-none-any.whl", _file_record(shared))
    with store.transaction() as tx:
        tx.delete("file/u/dev/a/a-1-py3-none-any.whl")
    assert sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME)).removed == 0
    with store.transaction() as tx:
        tx.delete("file/u/prod/a/a-1-py3-none-any.whl")
    assert sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME)).removed == 1
    store.close()


def test_a_reference_committed_while_the_tree_is_walked_keeps_its_blob(tmp_path: Path) -> None:
    """The live set is read after the listing, so a write that lands in between is seen."""
    store, blobs = open_store(tmp_path / "s")
    digest = _blob(blobs, b"uploaded during the sweep")
    read = read_live_from(tmp_path / "s" / DB_NAME)

    def commit_then_read() -> tuple[int, set[str]]:
        with store.transaction() as tx:
            tx.set("file/u/i/a/a-1-py3-none-any.whl", _file_record(digest))
        return read()

    assert sweep(blobs, commit_then_read).removed == 0 and blobs.exists(digest)
    store.close()


def test_reusing_an_old_blob_protects_it_from_a_concurrent_sweep(tmp_path: Path) -> None:
    """An upload whose bytes are already stored writes no new file: ``reuse`` (and so
    ``put_bytes``) refreshes the old one's time, and the grace period covers the moment until
    the upload's record is committed."""
    store, blobs = open_store(tmp_path / "s")
    digest = _blob(blobs, b"metadata seen before")
    assert blobs.put_bytes(b"metadata seen before") == digest
    assert time.time() - blobs.path(digest).stat().st_mtime < 60
    assert sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME)).young == 1
    os.utime(blobs.path(digest), (OLD, OLD))
    assert blobs.reuse(digest) and not blobs.reuse("0" * 64)
    assert sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME)).removed == 0
    store.close()


def test_a_stopping_server_ends_the_sweep_early(tmp_path: Path) -> None:
    store, blobs = open_store(tmp_path / "s")
    for i in range(5):
        _blob(blobs, f"orphan {i}".encode())
    seen: list[int] = []
    report = sweep(blobs, read_live_from(tmp_path / "s" / DB_NAME),
                   progress=lambda n, total: seen.append(n), should_stop=lambda: len(seen) >= 2)
    assert report.removed == 2 and report.scanned == 2
    assert len(list(stored_blobs(blobs.root))) == 3
    store.close()


# -- the service loop ---------------------------------------------------------------------------
def test_the_service_loop_survives_failing_sweeps_and_backs_off() -> None:
    clock = Clock()
    outcomes: list[Any] = [
        RuntimeError("cannot even start"),  # raised synchronously
        fail(OSError("disk went away")),  # a failed Deferred
        succeed(SweepReport(scanned=3, removed=1, freed_bytes=10, serial=7,
                            errors=["x: permission denied"])),
    ]
    calls: list[bool] = []

    def run_sweep(should_stop: Any) -> Deferred[SweepReport]:
        calls.append(should_stop())
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    gc = BlobGCService(clock, run_sweep, interval=3600.0, grace_seconds=60.0)
    gc.startService()
    clock.advance(FIRST_SWEEP_DELAY)
    assert calls == [False] and gc.failures == 1 and gc.last_error == "cannot even start"
    clock.advance(RETRY_START - 1)
    assert len(calls) == 1
    clock.advance(1)  # the first retry after a minute
    assert len(calls) == 2 and gc.failures == 2 and "disk went away" in str(gc.last_error)
    clock.advance(2 * RETRY_START)  # then two minutes
    assert len(calls) == 3 and gc.failures == 0 and gc.last_error is None
    status = gc.status()["blob-gc"]
    assert status["last"]["removed"] == 1 and status["last"]["errors"] == 1
    assert status["running"] is False
    assert clock.getDelayedCalls()[0].getTime() == clock.seconds() + 3600.0
    gc.stopService()
    assert clock.getDelayedCalls() == []


def test_the_loop_goes_on_when_handling_an_outcome_fails() -> None:
    clock = Clock()
    outcomes: list[Any] = [succeed("not a report"), succeed(SweepReport(removed=1))]
    gc = BlobGCService(clock, lambda stop: outcomes.pop(0), interval=600.0, grace_seconds=0.0)
    gc.startService()
    clock.advance(FIRST_SWEEP_DELAY)  # the outcome cannot be read: logged, retried soon
    assert gc.last is None and len(outcomes) == 1
    clock.advance(RETRY_START)
    assert gc.last is not None and gc.last["removed"] == 1 and outcomes == []
    gc.stopService()


def test_interval_zero_never_sweeps() -> None:
    clock = Clock()
    gc = BlobGCService(clock, lambda stop: succeed(SweepReport()), interval=0.0,
                       grace_seconds=0.0)
    gc.startService()
    assert clock.getDelayedCalls() == []
    gc.stopService()


# -- end to end ---------------------------------------------------------------------------------
def _blob_count(server: Devpid) -> int:
    return len(list(stored_blobs(server.serverdir / "+blobs")))


def test_the_daemon_sweeps_deleted_files_and_keeps_shared_ones(
    start_devpid: Any, tmp_path: Path
) -> None:
    server = start_devpid("--gc-interval", "1", "--gc-grace", "2", root_pypi=False)
    env = client_env(tmp_path / "client")
    auth = make_user(server, "maintainer", "pw")
    dev, prod = make_index(server, auth, "dev"), make_index(server, auth, "prod")
    keep = make_wheel(tmp_path / "d", "keep-me", "1.0")
    gone = make_wheel(tmp_path / "d", "gone-soon", "1.0", extra_bytes=200_000)
    twine_upload(f"{server.url}/{dev}/", auth, env, keep, gone)
    twine_upload(f"{server.url}/{prod}/", auth, env, gone)  # the same bytes in a second index
    uploaded = time.time()
    assert _blob_count(server) == 4  # two wheels, two metadata files
    # delete from dev: prod still names the blob, so it stays
    r = server.json("DELETE", f"/{dev}/gone-soon", auth=auth)
    assert r.status_code == 200
    deleted_at = int(r.headers["X-Devpi-Serial"])

    def gc_status() -> dict[str, Any]:
        result: dict[str, Any] = server.json("GET", "/+status").json()["result"]["blob-gc"]
        return result

    def swept_since_delete_and_grace() -> bool:
        # a sweep that saw the deletion, at a time the files were past the 2 s grace: only
        # the prod record can have kept the shared blob
        last = gc_status()["last"]
        return bool(last and last["serial"] >= deleted_at and last["finished"] > uploaded + 2.5)

    wait_for(swept_since_delete_and_grace, 20, "a sweep after the delete and the grace")
    status = gc_status()
    assert status["last"] is not None and status["last_error"] is None, status
    assert _blob_count(server) == 4
    # delete from prod with devpi-client: now nothing needs it and the daemon sweeps it
    run([tool("devpi"), "use", server.url + "/"], env)
    run([tool("devpi"), "login", auth[0], "--password", auth[1]], env)
    run([tool("devpi"), "use", prod], env)
    run([tool("devpi"), "remove", "-y", "gone-soon"], env)
    wait_for(lambda: _blob_count(server) == 2, 20, "the unshared wheel swept")
    names, _ = pip_download(env, f"{server.url}/{dev}/+simple/", "keep-me")
    assert names == [keep.name]
    r = requests.get(f"{server.url}/{prod}/+simple/gone-soon/", timeout=10)
    assert r.status_code == 404


def test_devpid_gc_while_the_server_runs(start_devpid: Any, tmp_path: Path) -> None:
    server = start_devpid(root_pypi=False)  # default interval: its own sweep is hours away
    env = client_env(tmp_path / "client")
    auth = make_user(server, "maintainer", "pw")
    stage = make_index(server, auth, "dev")
    one, two = make_wheel(tmp_path / "d", "pkg", "1.0"), make_wheel(tmp_path / "d", "pkg", "2.0")
    upload_ok(server, auth, stage, one, "pkg", "1.0")
    upload_ok(server, auth, stage, two, "pkg", "2.0")
    assert server.json("DELETE", f"/{stage}/pkg/1.0", auth=auth).status_code == 200
    gc = [tool("devpid"), "gc", "--serverdir", str(server.serverdir)]
    out = run([*gc, "--dry-run"], env)
    assert "would remove 0" in out.stdout and "2 younger than the grace period" in out.stdout
    out = run([*gc, "--dry-run", "--grace-seconds", "0"], env)
    assert "would remove 2" in out.stdout and _blob_count(server) == 4
    out = run([*gc, "--grace-seconds", "0"], env)
    assert "removed 2" in out.stdout and "checking" in out.stderr
    assert _blob_count(server) == 2
    names, _ = pip_download(env, f"{server.url}/{stage}/+simple/", "pkg")
    assert names == [two.name]
    assert "removed 0" in run([*gc, "--grace-seconds", "0"], env).stdout
    export = run([tool("devpid"), "export", "--serverdir", str(server.serverdir),
                  str(tmp_path / "dump")], env)
    assert "exported" in export.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--grace-seconds", "-1"], 2, "must not be negative"),
        (["--grace-seconds", "soon"], 2, "invalid float value"),
    ],
)
def test_devpid_gc_refuses_bad_arguments(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    store, _ = open_store(tmp_path / "s")
    store.close()
    proc = run([tool("devpid"), "gc", "--serverdir", str(tmp_path / "s"), *args],
               client_env(tmp_path / "c"), check=False)
    assert proc.returncode == code and message in proc.stderr


def test_devpid_gc_on_a_directory_that_is_not_a_server(tmp_path: Path) -> None:
    proc = run([tool("devpid"), "gc", "--serverdir", str(tmp_path / "nothing")],
               client_env(tmp_path / "c"), check=False)
    assert proc.returncode == 1 and "not an initialised server directory" in proc.stderr
    assert not (tmp_path / "nothing").exists()


def test_devpid_gc_on_a_damaged_database_deletes_nothing(tmp_path: Path) -> None:
    store, blobs = open_store(tmp_path / "s")
    digest = _blob(blobs, b"maybe needed")
    store.close()
    (tmp_path / "s" / DB_NAME).write_bytes(b"this is not a database" * 100)
    for name in ("-wal", "-shm"):
        (tmp_path / "s" / (DB_NAME + name)).unlink(missing_ok=True)
    proc = run([tool("devpid"), "gc", "--serverdir", str(tmp_path / "s"), "--grace-seconds", "0"],
               client_env(tmp_path / "c"), check=False)
    assert proc.returncode == 1 and "nothing was deleted" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and blobs.exists(digest)


def test_twistd_refuses_negative_gc_settings(tmp_path: Path) -> None:
    for flag in ("--gc-interval", "--gc-grace"):
        proc = run([tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir",
                    str(tmp_path / "s"), flag, "-5"], client_env(tmp_path / "c"), check=False)
        assert proc.returncode != 0 and f"{flag} must not be negative" in proc.stdout + proc.stderr


def test_keys_name_the_blobs_of_records_only(tmp_path: Path) -> None:
    assert keys.record_blobs("file/u/i/a/x.whl", {"sha256": "ab", "metadata_sha256": None}) == [
        "ab"
    ]
    assert keys.record_blobs("toxresult/u/i/a/x.whl/0", {"sha256": "cd"}) == ["cd"]
    assert keys.record_blobs("release/u/i/a/1", {"sha256": "ab"}) == []
    assert keys.record_blobs("doc/u/i/a/1", "garbage") == []
    assert keys.mirror_page_blobs({"files": ["x", {"hashes": "y"}, {"core_metadata": True}]}) == []
