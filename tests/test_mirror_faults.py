"""A lying or stuck upstream never misleads or hangs a mirror's clients (issue 13, items 1, 2, 4).

A real daemon mirrors our fault-injecting fake upstream on loopback; clients are raw
``requests`` streams, so we see exactly what reaches the wire: a page that is 200 but no valid
page never replaces a cached one, a stalled or trickling download is cut off for every reader,
and a body with the wrong hash never arrives as a complete 200.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ROOT_PASSWORD, Devpid, init_serverdir
from tests.support.fakepypi import PAGE_FAULTS, FakePyPI, PageFault
from tests.support.mirrorclients import (
    JSON_ACCEPT,
    assert_recovers,
    concurrent_reads,
    file_url,
    metric,
    page,
    status,
    temp_blobs,
    wait_for,
)

TIMEOUT = 2  # the daemon's --request-timeout: also its stall window
MIN_RATE = 50_000  # the daemon's --mirror-min-rate (bytes/s)
TRICKLE = 4_000  # bytes/s of a trickling upstream file, far below MIN_RATE


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    fake = FakePyPI(tmp_path_factory.mktemp("faulty-upstream"))
    fake.start()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, up: FakePyPI) -> Iterator[Devpid]:
    serverdir = tmp_path_factory.mktemp("faults") / "server"
    init_serverdir(serverdir, up.url)
    daemon = Devpid(serverdir, args=["--request-timeout", str(TIMEOUT),
                                     "--mirror-min-rate", str(MIN_RATE)]).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def mirror(server: Devpid, up: FakePyPI, unique: str) -> Iterator[str]:
    """A fresh mirror index (own backoff state) with a 1 s cache expiry."""
    user = f"f{unique}"
    assert server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    r = server.json("PUT", f"/{user}/mirror", auth=("root", ROOT_PASSWORD), json={
        "type": "mirror", "mirror_url": up.url, "mirror_cache_expiry": "1"})
    assert r.status_code == 200, r.text
    yield f"{user}/mirror"
    up.clear_faults()


# -- item 1: a 200 that is not a valid page ---------------------------------------------------


@pytest.mark.parametrize("fault", [f for f in PAGE_FAULTS if f != "cut-length"])
def test_invalid_page_never_replaces_the_cached_one(
    server: Devpid, up: FakePyPI, mirror: str, unique: str, fault: PageFault
) -> None:
    name = f"pg-{fault}-{unique}"
    for version in ("1.0", "2.0", "3.0"):
        up.publish(name, version)
    good = page(server, mirror, name)
    assert good.ok and len(good.json()["files"]) == 3
    project_url = f"{up.url}{name}/"
    up.page_fault(name, fault)
    before = up.count(f"/simple/{name}/")
    time.sleep(1.1)  # the cached page is stale now: the next request refreshes it
    r = page(server, mirror, name)
    assert r.ok and r.json()["files"] == good.json()["files"]
    assert wait_for(lambda: up.count(f"/simple/{name}/") > before)
    assert wait_for(lambda: project_url in (status(server, mirror)["last_error"] or ""))
    # the cached page is still what is served, however often we ask, and the backoff grows
    # as for any failure: the second faulty answer makes two failures in a row
    def asked_twice() -> bool:
        assert page(server, mirror, name).json()["files"] == good.json()["files"]
        return up.count(f"/simple/{name}/") >= before + 2
    assert wait_for(asked_twice, 15)
    assert wait_for(lambda: status(server, mirror)["consecutive_failures"] >= 2, 5)
    assert status(server, mirror)["failures_total"] >= 2
    assert metric(server, "mirror_upstream_up", mirror) == 0
    assert metric(server, "mirror_upstream_failures_total", mirror) >= 2

    # a project never cached: a 502 naming the upstream, not a 200 without files
    fresh = f"pg-new-{fault}-{unique}"
    up.publish(fresh, "1.0")
    up.page_fault(fresh, fault)
    r = page(server, mirror, fresh)
    assert r.status_code == 502, r.text
    assert f"127.0.0.1:{up.port}" in r.json()["message"]

    # each failed contact is logged once, as one line, never as a traceback
    asked = up.count(f"/simple/{name}/") - before
    logged = wait_for(lambda: server.log().count(f"upstream {project_url}: ") == asked, 5)
    assert logged, (asked, server.log().count(f"upstream {project_url}: "))
    assert "Traceback" not in server.log()

    # the upstream heals: after the backoff the page updates by itself
    up.clear_faults()
    up.publish(name, "4.0")
    assert wait_for(lambda: "4.0" in page(server, mirror, name).json()["versions"], 30)
    assert wait_for(lambda: page(server, mirror, fresh).ok, 30)
    assert status(server, mirror)["consecutive_failures"] == 0


def test_cut_project_list_never_replaces_the_cached_one(
    server: Devpid, up: FakePyPI, mirror: str, unique: str
) -> None:
    for i in range(20):
        up.publish(f"listed-{i}-{unique}", "1.0")

    def names() -> list[str]:
        r = requests.get(f"{server.url}/{mirror}/+simple/", headers={"Accept": JSON_ACCEPT},
                         timeout=15)
        assert r.ok, r.text
        return [p["name"] for p in r.json()["projects"]]

    before = names()
    assert len(before) >= 20
    up.list_fault = "cut"  # HTML, no Content-Length, the connection closes half-way
    time.sleep(1.1)
    names()  # stale: starts a refresh in the background
    assert wait_for(lambda: "cut off" in (status(server, mirror)["project_list"]["error"] or ""))
    assert names() == before


# -- items 2 and 4: file downloads ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall", "trickle"])
def test_stuck_download_is_cut_off_for_every_reader(
    server: Devpid, up: FakePyPI, mirror: str, unique: str, fault: str
) -> None:
    name = f"stuck-{fault}-{unique}"
    path = up.publish(name, "1.0", extra_bytes=2_000_000)
    size = path.stat().st_size
    url = file_url(server, mirror, name)
    up.slow_rate = TRICKLE
    up.file_fault(path.name, fault)  # type: ignore[arg-type]
    failures = status(server, mirror).get("download_failures", 0)
    results = concurrent_reads(url, 3)
    for code, got, outcome in results:
        # the connection is closed: never a hang, never a short body passed off as complete
        assert outcome not in ("hung", "complete"), results
        assert code in (200, None) and got < size, results
    assert up.count(f"/files/{path.name}") == 1  # all three read along one download
    assert status(server, mirror)["download_failures"] == failures + 1
    assert metric(server, "mirror_download_failures_total", mirror) == failures + 1
    assert wait_for(lambda: not temp_blobs(server), 5), temp_blobs(server)
    assert "stalled" in server.log() if fault == "stall" else "too slow" in server.log()
    assert_recovers(server, up, url, path)


@pytest.mark.parametrize(("megabytes", "framing"), [
    (2, "close"), (50, "close"), (2, "chunked")])
def test_wrong_bytes_never_arrive_as_a_complete_download(
    server: Devpid, up: FakePyPI, mirror: str, unique: str, megabytes: int, framing: Any
) -> None:
    """The page promises size and sha256; the upstream marks the body's end by chunked
    framing or (as HTTP/1.0 servers do) by closing the connection, so the end arrives after
    the last bytes. (With a Content-Length the end comes with them; test_mirror covers it.)"""
    name = f"wrong-{megabytes}-{framing}-{unique}"
    path = up.publish(name, "1.0", extra_bytes=megabytes * 1_000_000)
    size = path.stat().st_size
    url = file_url(server, mirror, name)
    up.corrupt(path.name)  # same length, other bytes: only the hash can tell
    # Upstream slower than the clients (about 2 s per file), so readers are caught up when
    # the last chunk arrives: the moment a complete-looking body could slip out.
    up.slow_rate = size // 2
    up.mode = "slow"
    up.file_framing = framing
    try:
        results = concurrent_reads(url, 2, stagger=0.05)
    finally:
        up.file_framing = "length"
    for code, got, outcome in results:
        assert outcome not in ("hung", "complete"), results
        assert got < size, results  # the last byte is held back until the hash is checked
        assert code in (200, None)
    assert wait_for(lambda: not temp_blobs(server), 5), temp_blobs(server)
    assert "sha256 mismatch" in server.log()
    assert_recovers(server, up, url, path)
