"""Bounded mirror caches (issue 18 item 2): ``mirror_max_bytes``, least recently downloaded
files evicted first, never private uploads, counters in /+status and /+metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid.mirror.cache import choose_victims
from devpid.mirror.policy import PolicyError, parse_size
from tests.conftest import ROOT_PASSWORD, Devpid, run, tool, twine_upload
from tests.support.fakepypi import FakePyPI

ROOT = ("root", ROOT_PASSWORD)  # mirrors are root's to create (--mirror-admins)


def test_sizes_and_the_eviction_order() -> None:
    assert parse_size("500M") == 500 << 20 and parse_size("4GiB") == 4 << 30
    assert parse_size("1.5GB") == 3 << 29 and parse_size(123) == 123
    assert parse_size("512k") == 512 << 10 == parse_size("512 KiB")
    for bad in ("10Q", "-1", "", "1ib", True):
        with pytest.raises(PolicyError, match="mirror_max_bytes"):
            parse_size(bad)
    files = [("a", 10, 5.0), ("b", 10, 1.0), ("c", 10, 3.0), ("d", 10, 9.0)]
    assert choose_victims(files, 40) == []
    assert choose_victims(files, 25) == ["b", "c"]
    assert choose_victims(files, 0) == ["b", "c", "a", "d"]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    fake = FakePyPI(tmp_path_factory.mktemp("cache-upstream"))
    fake.start()
    yield fake
    fake.close()


def whl(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def file_url(server: Devpid, up: FakePyPI, stage: str, filename: str) -> str:
    sha = up.sha256(filename)
    return f"{server.url}/{stage}/+f/{sha[:3]}/{sha[3:16]}/{filename}"


def cache_status(server: Devpid, stage: str) -> dict[str, Any]:
    status = server.json("GET", "/+status").json()["result"]
    assert status["mirror-cache-loaded"] is True
    return status["mirror-cache"].get(stage, {})  # type: ignore[no-any-return]


def wait_cached(server: Devpid, stage: str, files: int) -> None:
    """A download's record is committed just after its last byte went out: wait for it."""
    deadline = time.monotonic() + 15
    while cache_status(server, stage).get("files", 0) < files:
        assert time.monotonic() < deadline, cache_status(server, stage)
        time.sleep(0.05)


def test_bounded_cache_evicts_least_recently_downloaded_never_private(
    devpid_server: Devpid, up: FakePyPI, env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    name = f"big-{unique}"
    for v in ("1", "2", "3"):
        up.publish(name, v, extra_bytes=30_000)
    sizes = {v: (up.directory / whl(name, v)).stat().st_size for v in ("1", "2", "3")}
    bound = sum(sizes.values()) - 1  # all three do not fit
    user = f"c{unique}"
    assert devpid_server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    r = devpid_server.json("PUT", f"/{user}/mirror", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url, "mirror_max_bytes": str(bound)})
    assert r.status_code == 200 and r.json()["result"]["mirror_max_bytes"] == bound, r.text
    stage = f"{user}/mirror"
    # the same bytes as version 2, uploaded privately: eviction never touches them
    assert devpid_server.json("PUT", f"/{user}/dev", auth=(user, "pw"), json={}).ok
    twine_upload(f"{devpid_server.url}/{user}/dev/", (user, "pw"), env,
                 up.directory / whl(name, "2"))
    index = f"{devpid_server.url}/{stage}/+simple/"
    for n, v in enumerate(("1", "2"), 1):
        run([tool("pip"), "download", "--no-deps", "-d", str(tmp_path / v), "-i", index,
             f"{name}=={v}", "--timeout", "10", "--retries", "0"], env)
        wait_cached(devpid_server, stage, n)
    assert requests.get(file_url(devpid_server, up, stage, whl(name, "1"))).ok  # a hit: 1 is
    time.sleep(0.3)  # more recent than 2 now
    assert requests.get(file_url(devpid_server, up, stage, whl(name, "3"))).ok
    deadline = time.monotonic() + 15
    while cache_status(devpid_server, stage).get("evictions", 0) < 1:
        assert time.monotonic() < deadline, cache_status(devpid_server, stage)
        time.sleep(0.2)
    status = cache_status(devpid_server, stage)
    assert status["files"] == 2 and status["bytes"] == sizes["1"] + sizes["3"] <= bound
    assert status["evictions"] == 1 and status["evicted_bytes"] == sizes["2"]
    assert status["max_bytes"] == bound and status["misses"] == 3 and status["hits"] >= 1
    assert 0 < status["hit_ratio"] < 1
    page = requests.get(f"{index}{name}/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json"}).json()
    assert len(page["files"]) == 3  # the page still lists it: fetched again on demand
    # the private upload of the same bytes is untouched
    private = requests.get(f"{devpid_server.url}/{user}/dev/+simple/{name}/").text
    assert whl(name, "2") in private
    sha2 = up.sha256(whl(name, "2"))
    blob = devpid_server.serverdir / "+blobs" / sha2[:2] / sha2[2:4] / sha2
    assert blob.is_file()
    # an evicted file is fetched again on demand, with the right bytes
    before = len(up.requests)
    r = requests.get(file_url(devpid_server, up, stage, whl(name, "2")))
    assert r.ok and r.content == (up.directory / whl(name, "2")).read_bytes()
    assert len(up.requests) > before
    metrics = requests.get(f"{devpid_server.url}/+metrics").text
    assert f'devpid_mirror_cache_evictions_total{{stage="{stage}"}}' in metrics
    assert f'devpid_mirror_cache_max_bytes{{stage="{stage}"}} {bound}\n' in metrics


def test_evicted_blob_is_deleted_and_bad_bounds_are_400(
    devpid_server: Devpid, up: FakePyPI, unique: str
) -> None:
    name = f"gone-{unique}"
    up.publish(name, "1", extra_bytes=20_000)
    up.publish(name, "2", extra_bytes=20_000)
    user = f"g{unique}"
    assert devpid_server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    r = devpid_server.json("PUT", f"/{user}/mirror", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url, "mirror_max_bytes": "10Q"})
    assert r.status_code == 400 and "mirror_max_bytes" in r.json()["message"]
    assert devpid_server.json("PUT", f"/{user}/mirror", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url}).ok
    stage = f"{user}/mirror"
    requests.get(f"{devpid_server.url}/{stage}/+simple/{name}/")
    for n, v in enumerate(("1", "2"), 1):
        assert requests.get(file_url(devpid_server, up, stage, whl(name, v))).ok
        wait_cached(devpid_server, stage, n)
    sha1 = up.sha256(whl(name, "1"))
    blob = devpid_server.serverdir / "+blobs" / sha1[:2] / sha1[2:4] / sha1
    assert blob.is_file()
    # lowering the bound evicts at once (1 is the least recently downloaded)
    r = devpid_server.json("PATCH", f"/{user}/mirror", auth=(user, "pw"),
                           json=["mirror_max_bytes=30kB"])
    assert r.status_code == 200 and r.json()["result"]["mirror_max_bytes"] == 30 << 10
    deadline = time.monotonic() + 15
    while blob.exists():
        assert time.monotonic() < deadline, cache_status(devpid_server, stage)
        time.sleep(0.2)
    assert cache_status(devpid_server, stage)["files"] == 1


def test_cache_cli_lists_and_prunes_by_project_and_age(
    devpid_server: Devpid, up: FakePyPI, env: dict[str, str], unique: str
) -> None:
    keep, drop = f"keep-{unique}", f"drop-{unique}"
    up.publish(keep, "1")
    up.publish(drop, "1")
    user = f"l{unique}"
    assert devpid_server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    assert devpid_server.json("PUT", f"/{user}/mirror", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url}).ok
    assert devpid_server.json("PUT", f"/{user}/dev", auth=(user, "pw"), json={}).ok
    stage = f"{user}/mirror"
    for n, name in enumerate((keep, drop), 1):
        requests.get(f"{devpid_server.url}/{stage}/+simple/{name}/")
        assert requests.get(file_url(devpid_server, up, stage, whl(name, "1"))).ok
        wait_cached(devpid_server, stage, n)
    cli = [tool("devpid"), "cache"]
    sd = ["--serverdir", str(devpid_server.serverdir), "--index", stage]
    out = run([*cli, "list", *sd], env).stdout
    assert whl(keep, "1") in out and whl(drop, "1") in out and "cached 2 files" in out
    assert "would prune 0 files" in run([*cli, "prune", *sd, "--older-than", "1h",
                                         "--dry-run"], env).stdout
    proc = run([*cli, "prune", *sd], env, check=False)
    assert proc.returncode == 2 and "--all" in proc.stderr
    proc = run([*cli, "list", "--serverdir", str(devpid_server.serverdir), "--index",
                f"{user}/dev"], env, check=False)
    assert proc.returncode == 2 and "not a mirror index" in proc.stderr
    out = run([*cli, "prune", *sd, "--project", drop.upper()], env).stdout
    assert "pruned 1 files" in out and whl(drop, "1") in out
    sha = up.sha256(whl(drop, "1"))
    assert not (devpid_server.serverdir / "+blobs" / sha[:2] / sha[2:4] / sha).exists()
    out = run([*cli, "list", *sd], env).stdout
    assert whl(keep, "1") in out and whl(drop, "1") not in out
    # the running server noticed: the file is fetched again on demand
    before = len(up.requests)
    r = requests.get(file_url(devpid_server, up, stage, whl(drop, "1")))
    assert r.ok and r.content == (up.directory / whl(drop, "1")).read_bytes()
    assert len(up.requests) > before


def test_server_total_bound_evicts_across_mirrors(
    start_devpid, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    fake = FakePyPI(tmp_path / "up")
    fake.start()
    try:
        for v in ("1", "2", "3"):
            fake.publish("total", v, extra_bytes=30_000)
        sizes = {v: (fake.directory / whl("total", v)).stat().st_size for v in ("1", "2", "3")}
        bound = sum(sizes.values()) - 1
        server: Devpid = start_devpid("--mirror-max-bytes", str(bound), upstream_url=fake.url)
        assert server.json("PUT", "/u", json={"password": "pw"}).ok
        assert server.json("PUT", "/u/other", auth=ROOT, json={
            "type": "mirror", "mirror_url": fake.url}).ok
        for stage, v, n in (("root/pypi", "1", 1), ("u/other", "2", 1)):
            requests.get(f"{server.url}/{stage}/+simple/total/")
            assert requests.get(file_url(server, fake, stage, whl("total", v))).ok
            wait_cached(server, stage, n)
            time.sleep(0.3)  # a distinct last-download time each
        requests.get(f"{server.url}/root/pypi/+simple/total/")
        assert requests.get(file_url(server, fake, "root/pypi", whl("total", "3"))).ok
        deadline = time.monotonic() + 15
        while cache_status(server, "root/pypi").get("evictions", 0) < 1:
            assert time.monotonic() < deadline, cache_status(server, "root/pypi")
            time.sleep(0.2)
        status = server.json("GET", "/+status").json()["result"]
        assert status["mirror-cache-total"] == {"bytes": sizes["2"] + sizes["3"],
                                                "max_bytes": bound}
        assert status["mirror-cache"]["u/other"]["files"] == 1
        assert "devpid_mirror_cache_total_bytes " in requests.get(server.url + "/+metrics").text
        # after a restart the index is rebuilt from the store (off the reactor)
        server.stop()
        server.start()
        deadline = time.monotonic() + 15
        while not server.json("GET", "/+status").json()["result"]["mirror-cache-loaded"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert server.json("GET", "/+status").json()["result"]["mirror-cache-total"][
            "bytes"] == sizes["2"] + sizes["3"]
    finally:
        fake.close()


def test_a_failed_eviction_run_is_retried_with_its_stages() -> None:
    """The eviction loop survives an error (here: the config lookup fails once): the stages
    it was working on are kept and the run is tried again after RETRY_DELAY."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from devpid.mirror.cache import RETRY_DELAY, MirrorCache

    calls: list[str] = []

    def index_config(stage: str) -> dict[str, Any]:
        calls.append(stage)
        if len(calls) == 1:
            raise RuntimeError("injected: database is locked")
        return {"type": "mirror"}  # no bound: nothing to evict

    clock = Clock()
    server = SimpleNamespace(settings=SimpleNamespace(role="standalone", mirror_max_bytes=0),
                             reactor=clock, index_config=index_config)
    cache = MirrorCache(server)
    cache._dirty = {"root/pypi"}
    cache._run()
    assert calls == ["root/pypi"] and cache._dirty == {"root/pypi"}  # kept for the retry
    clock.advance(RETRY_DELAY)
    assert calls == ["root/pypi", "root/pypi"] and cache._dirty == set()


def test_start_up_index_is_built_a_slice_per_reactor_turn(tmp_path: Path) -> None:
    """The index of cached files is read in a thread one record at a time at one serial,
    and added on the reactor at most SLICE records per turn (1M files must not stall the
    server at start-up); a commit made during the build is applied after it."""
    from types import SimpleNamespace

    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from devpid.mirror.cache import SLICE, MirrorCache, MirrorCacheService
    from devpid.store import DB_NAME, open_store

    store, blobs = open_store(tmp_path)
    sha = "ab" * 32
    with store.transaction() as tx:
        tx.set("index/root/pypi", {"type": "mirror"})
        tx.set("index/root/dev", {"type": "stage"})
        for n in range(2 * SLICE + 7):
            stage = "root/pypi" if n % 2 else "root/dev"
            tx.set(f"file/{stage}/p{n:05d}/p-{n}.tar.gz", {"sha256": sha, "size": 10})
    pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def in_thread(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((d, f, args))
        return d

    clock = Clock()
    configs = {"root/pypi": {"type": "mirror"}, "root/dev": {"type": "stage"}}
    server = SimpleNamespace(
        settings=SimpleNamespace(role="standalone", mirror_max_bytes=0), reactor=clock,
        index_config=configs.get, in_thread=in_thread, blobs=blobs, store=store)
    cache = MirrorCache(server)
    service = MirrorCacheService(cache, tmp_path / DB_NAME)
    service.startService()
    clock.advance(0)
    sizes = []
    while pending:
        d, f, args = pending.pop(0)
        d.callback(f(*args))  # the "thread" answers; the reactor adds at most one slice
        sizes.append(len(cache.records))
        if len(sizes) == 2:  # a commit while the index is being built
            cache.on_commit(store.serial + 1, {"file/root/pypi/late/late-1.tar.gz":
                                               {"sha256": "cd" * 32, "size": 5},
                                               "file/root/dev/p00000/p-0.tar.gz": None})
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= SLICE and len([s for s in steps if s]) == 3, steps
    assert cache.loaded
    assert len(cache.records) == 2 * SLICE + 7  # one added late, one deleted late
    assert "file/root/pypi/late/late-1.tar.gz" in cache.records
    assert "file/root/dev/p00000/p-0.tar.gz" not in cache.records
    assert cache.usage()["root/pypi"] == (SLICE + 4, (SLICE + 3) * 10 + 5)
    service.stopService()
    store.close()
