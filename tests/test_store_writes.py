"""A node on PostgreSQL never waits on the database on its reactor (real daemon, real clients).

The test holds the database's ``head`` row lock (as another node's commit in progress does)
and checks that a write on the node waits for it while reads of the same node (/+api, a
simple page, a file) are answered; that the write completes when the lock goes; that a lock
held beyond the lock timeout is a 503 with a JSON message and the node goes on working; and
that concurrent uploads to one project on one node never conflict with each other.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import Devpid, client_env, init_serverdir, twine_upload
from tests.support.pg import requires_pg
from tests.support.pkgbuild import make_wheel

pytestmark = requires_pg


def _upload(node: Devpid, path: Path, name: str, version: str) -> requests.Response:
    data = path.read_bytes()
    fields = {":action": "file_upload", "protocol_version": "1", "name": name,
              "version": version, "sha256_digest": hashlib.sha256(data).hexdigest(),
              "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"}
    return requests.post(f"{node.url}/u/dev/", data=fields, auth=("u", "pw"),
                         files={"content": (path.name, data, "application/octet-stream")},
                         headers={"Accept": "application/json"}, timeout=60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Devpid, str]]:
    """One node on a fresh database, with user u, index u/dev and one uploaded wheel (its
    file URL is the third item)."""
    from tests.support.pg import fresh_database

    base = tmp_path_factory.mktemp("writes")
    url = fresh_database()
    init_serverdir(base / "a", None, root_pypi=False, store=url)
    a = Devpid(base / "a").start()
    try:
        assert a.json("PUT", "/u", json={"password": "pw"}).status_code == 201
        assert a.json("PUT", "/u/dev", auth=("u", "pw"), json={"bases": []}).ok
        wheel = make_wheel(base, "held", "1.0")
        r = _upload(a, wheel, "held", "1.0")
        assert r.status_code == 200, r.text
        page = requests.get(f"{a.url}/u/dev/+simple/held/",
                            headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        file_url = page.json()["files"][0]["url"]
        yield url, a, requests.compat.urljoin(f"{a.url}/u/dev/+simple/held/", file_url)
    finally:
        a.stop()


def _lock_waiters(conn: psycopg.Connection[Any]) -> int:
    """Sessions of this database waiting for a lock (the node's write thread, once queued)."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                       " current_database() AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0


def _wait_until_queued(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as watch:
        deadline = time.monotonic() + 10
        while _lock_waiters(watch) < 1:
            assert time.monotonic() < deadline, "the write never reached the database lock"
            time.sleep(0.02)


def test_reads_are_answered_while_a_write_waits_for_the_database_lock(node: Any) -> None:
    url, a, file_url = node
    with psycopg.connect(url) as holder, concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder.execute("SELECT serial FROM head WHERE id = 0 FOR UPDATE")
        pending = pool.submit(a.json, "PATCH", "/u/dev", auth=("u", "pw"),
                              json={"title": "written after the lock"})
        _wait_until_queued(url)  # the node's commit is now waiting on the lock we hold
        api = requests.get(a.url + "/+api", timeout=4)
        simple = requests.get(a.url + "/u/dev/+simple/held/", timeout=4)
        blob = requests.get(file_url, timeout=4)
        index = a.json("GET", "/u/dev", timeout=4)
        assert api.ok and simple.ok and "held-1.0" in simple.text and blob.ok
        assert blob.content[:2] == b"PK" and index.ok
        assert not pending.done()  # all of it answered while the write still waits
        holder.rollback()  # let go: the write goes through
        r = pending.result(timeout=30)
    assert r.status_code == 200, r.text
    assert a.json("GET", "/u/dev").json()["result"]["title"] == "written after the lock"
    assert "Traceback" not in a.log()


def test_a_lock_held_beyond_the_lock_timeout_is_a_503_and_the_node_goes_on(node: Any) -> None:
    url, a, _ = node
    with psycopg.connect(url) as holder, concurrent.futures.ThreadPoolExecutor(2) as pool:
        holder.execute("SELECT serial FROM head WHERE id = 0 FOR UPDATE")
        first = pool.submit(a.json, "PATCH", "/u/dev", auth=("u", "pw"),
                            json={"title": "never stored"})
        _wait_until_queued(url)
        # a second write on the node queues behind the first (the node's write lock)
        second = pool.submit(a.json, "PATCH", "/u/dev", auth=("u", "pw"),
                             json={"description": "after the refused one"})
        r = first.result(timeout=30)  # the lock timeout (5 s) passes
        assert r.status_code == 503, r.text
        body = r.json()
        assert "lock" in body["message"] and "Traceback" not in r.text
        assert requests.get(a.url + "/+api", timeout=4).ok  # still serving
        holder.rollback()
        r2 = second.result(timeout=30)
    # the second write either gave up on the lock as well, or got it when it was let go
    assert r2.status_code in (200, 503), r2.text
    r = a.json("PATCH", "/u/dev", auth=("u", "pw"), json={"description": "working again"})
    assert r.status_code == 200, r.text
    result = a.json("GET", "/u/dev").json()["result"]
    assert result["description"] == "working again" and result.get("title") != "never stored"
    assert "Traceback" not in a.log()


def test_concurrent_uploads_to_one_project_on_one_node_never_conflict(
    node: Any, tmp_path: Path,
) -> None:
    _, a, _ = node
    wheels = [make_wheel(tmp_path, "together", f"2.{n}") for n in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: _upload(a, wheels[n], "together", f"2.{n}"),
                                range(8)))
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
    serials = sorted(int(r.headers["X-Devpi-Serial"]) for r in answers)
    assert len(set(serials)) == 8
    page = requests.get(f"{a.url}/u/dev/+simple/together/", timeout=10)
    assert all(f"together-2.{n}-" in page.text for n in range(8)), page.text


def test_concurrent_twine_uploads_to_one_project_on_one_node(node: Any, tmp_path: Path) -> None:
    _, a, _ = node
    env = client_env(tmp_path)
    wheels = [make_wheel(tmp_path, "twined", f"3.{n}") for n in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda w: twine_upload(f"{a.url}/u/dev/", ("u", "pw"), env, w),
                             wheels))
    assert all(proc.returncode == 0 for proc in done)
    page = requests.get(f"{a.url}/u/dev/+simple/twined/", timeout=10)
    assert all(f"twined-3.{n}-" in page.text for n in range(8)), page.text
