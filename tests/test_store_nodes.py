"""Several real devpid nodes on one PostgreSQL database, sharing one blob directory.

Each node is a real ``twistd devpid --store URL`` process; clients are real pip and HTTP.
What a user of two nodes behind a balancer relies on: a write on any node is served by every
node from the serial it was given, serials stay gap-free under concurrent writes to both,
no accepted write is lost (a stale one is refused with 409 and succeeds when retried), and
a node that was down catches up when it comes back.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT_PASSWORD, Devpid, client_env, init_serverdir, run, tool
from tests.support.pg import requires_pg
from tests.support.polling import wait_serial

pytestmark = requires_pg


def _serial(node: Devpid) -> int:
    r = requests.get(node.url + "/+api", timeout=5)
    return int(r.headers["X-Devpi-Serial"])




def _upload(node: Devpid, stage: str, path: Path, name: str, version: str) -> requests.Response:
    import hashlib

    data = path.read_bytes()
    fields = {":action": "file_upload", "protocol_version": "1", "name": name,
              "version": version, "sha256_digest": hashlib.sha256(data).hexdigest(),
              "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"}
    return requests.post(f"{node.url}/{stage}/", data=fields, auth=("u", "pw"),
                         files={"content": (path.name, data, "application/octet-stream")},
                         headers={"Accept": "application/json"}, timeout=30)


def _upload_retrying(node: Devpid, stage: str, path: Path, name: str, version: str) -> int:
    """Upload, doing it again while the node answers 409 (a concurrent change elsewhere)."""
    for _ in range(20):
        r = _upload(node, stage, path, name, version)
        if r.status_code != 409:
            assert r.status_code == 200, r.text
            return int(r.headers["X-Devpi-Serial"])
        assert "retry" in r.json()["message"]
    raise AssertionError(f"{name}: still conflicting after 20 tries")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Devpid, Devpid]]:
    """Node A initialised the database; node B joined it with only --store (no init)."""
    from tests.support.pg import fresh_database

    base = tmp_path_factory.mktemp("nodes")
    url = fresh_database()
    shared = base / "blobs"
    shared.mkdir()
    for name in ("a", "b"):
        (base / name).mkdir()
        (base / name / "+blobs").symlink_to(shared)
    init_serverdir(base / "a", None, root_pypi=False, store=url)
    a = Devpid(base / "a").start()
    b = Devpid(base / "b", args=["--store", url]).start()
    try:
        r = a.json("PUT", "/u", json={"password": "pw"})
        assert r.status_code == 201, r.text
        wait_serial(b, int(r.headers["X-Devpi-Serial"]))  # a node serves a write's serial
        r = b.json("PUT", "/u/dev", auth=("u", "pw"), json={"bases": []})  # once it has it
        assert r.status_code == 200, r.text
        wait_serial(a, int(r.headers["X-Devpi-Serial"]))
        yield url, a, b
    finally:
        a.stop()
        b.stop()


def test_an_upload_to_one_node_installs_from_the_other(nodes: Any, tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    _, a, b = nodes
    wheel = make_wheel(tmp_path, "across-nodes", "1.0")
    serial = _upload_retrying(a, "u/dev", wheel, "across-nodes", "1.0")
    wait_serial(b, serial)
    target = tmp_path / "target"
    run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
         b.url + "/u/dev/+simple/", "across-nodes==1.0"], client_env(tmp_path))
    assert any(p.name.startswith("across_nodes") for p in target.iterdir())


def test_concurrent_writes_to_both_nodes_are_gap_free_and_none_lost(
    nodes: Any, tmp_path: Path
) -> None:
    import psycopg

    from tests.support.pkgbuild import make_wheel

    url, a, b = nodes
    jobs = []
    for n in range(12):  # 4 projects, 3 versions each: both nodes write the same projects
        name, version = f"busy-{n % 4}", f"1.{n}"
        jobs.append(((a, b)[n % 2], make_wheel(tmp_path, name, version), name, version))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        serials = list(pool.map(lambda job: _upload_retrying(job[0], "u/dev", *job[1:]),
                                jobs))
    top = max(serials)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT serial FROM changelog ORDER BY serial").fetchall()
    assert [s for (s,) in rows] == list(range(len(rows))) and rows[-1][0] >= top
    for node in (a, b):
        wait_serial(node, top)
        for n in range(4):
            r = requests.get(f"{node.url}/u/dev/+simple/busy-{n}/", timeout=10)
            assert all(f"-1.{v}-" in r.text for v in range(n, 12, 4)), (node.url, r.text)
        assert _serial(node) == rows[-1][0]


def test_a_node_that_was_down_catches_up(nodes: Any, tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    _, a, b = nodes
    b.stop()
    wheel = make_wheel(tmp_path, "while-away", "1.0")
    serial = _upload_retrying(a, "u/dev", wheel, "while-away", "1.0")
    b.start()
    assert _serial(b) >= serial  # caught up before it answered anything
    r = requests.get(b.url + "/u/dev/+simple/while-away/", timeout=10)
    assert r.status_code == 200 and "while_away-1.0" in r.text.replace("-", "_", 1)
    r = b.json("PATCH", "/u/dev", auth=("u", "pw"), json={"title": "from b"})
    assert r.status_code == 200, r.text
    wait_serial(a, int(r.headers["X-Devpi-Serial"]))
    assert a.json("GET", "/u/dev").json()["result"]["title"] == "from b"


def test_the_root_password_node_a_initialised_logs_in_on_node_b(nodes: Any) -> None:
    _, _a, b = nodes
    assert b.login("root", ROOT_PASSWORD)


def test_cache_prune_on_one_node_is_a_commit_every_node_sees(
    nodes: Any, tmp_path: Path
) -> None:
    from tests.support.fakepypi import FakePyPI

    _, a, b = nodes
    up = FakePyPI(tmp_path / "up")
    up.start()
    try:
        up.publish("pruned-pkg", "1")
        r = a.json("PUT", "/u/mirror", auth=("root", ROOT_PASSWORD),
                   json={"type": "mirror", "mirror_url": up.url})
        assert r.status_code == 200, r.text
        filename = "pruned_pkg-1-py3-none-any.whl"
        sha = up.sha256(filename)
        assert requests.get(f"{a.url}/u/mirror/+simple/pruned-pkg/", timeout=10).ok
        r = requests.get(f"{a.url}/u/mirror/+f/{sha[:3]}/{sha[3:16]}/{filename}", timeout=10)
        assert r.ok
        cli = [tool("devpid"), "cache"]
        deadline = time.monotonic() + 15
        while "cached 1 files" not in run([*cli, "list", "--serverdir", str(b.serverdir),
                                           "--index", "u/mirror"], client_env(tmp_path)).stdout:
            assert time.monotonic() < deadline, "node B never saw the cached file"
            time.sleep(0.1)
        out = run([*cli, "prune", "--all", "--serverdir", str(b.serverdir), "--index",
                   "u/mirror"], client_env(tmp_path)).stdout
        assert "pruned 1 files" in out
        # the prune was a commit in the database: node A hears it and says so
        deadline = time.monotonic() + 15
        while "cached 0 files" not in run([*cli, "list", "--serverdir", str(a.serverdir),
                                           "--index", "u/mirror"], client_env(tmp_path)).stdout:
            assert time.monotonic() < deadline, "node A never saw the prune"
            time.sleep(0.1)
        # and node B's daemon, whose view the command line shared, goes on past it
        r = a.json("PATCH", "/u/dev", auth=("u", "pw"), json={"title": "after the prune"})
        assert r.status_code == 200, r.text
        wait_serial(b, int(r.headers["X-Devpi-Serial"]))
        assert b.json("GET", "/u/dev").json()["result"]["title"] == "after the prune"
        assert "applying" not in b.log(), b.log()
    finally:
        up.close()


def test_a_write_built_on_state_another_node_changed_gets_409_then_retry_works(
    nodes: Any,
) -> None:
    """Deterministic race: while the test holds the database's head lock, node B takes a
    change of an index (read from its view) to commit; the test then commits, as another
    node would, a change of that same index and lets go. B must refuse, not overwrite."""
    import json

    import psycopg

    url, _a, b = nodes
    with psycopg.connect(url) as other:
        head = other.execute("SELECT serial FROM head FOR UPDATE").fetchone()[0]
        wait_serial(b, head)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(b.json, "PATCH", "/u/dev", auth=("u", "pw"),
                                  json={"title": "B's title"})
            time.sleep(0.3)  # B is now queued on the lock (a wait, not a timing assertion)
            (text,) = other.execute("SELECT value FROM kv WHERE key = 'index/u/dev'").fetchone()
            config = dict(json.loads(text), description="another node's change")
            value = json.dumps(config, separators=(",", ":"), sort_keys=True)
            serial = head + 1
            other.execute("INSERT INTO changelog VALUES (%s, 0, %s)",
                          (serial, json.dumps({"index/u/dev": config}, separators=(",", ":"),
                                              sort_keys=True)))
            other.execute("UPDATE kv SET value = %s, serial = %s WHERE key = 'index/u/dev'",
                          (value, serial))
            other.execute("UPDATE head SET serial = %s", (serial,))
            other.commit()
            r = pending.result(timeout=30)
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert "concurrent change" in message and "nothing was stored" in message
    assert "Traceback" not in b.log()
    r = b.json("PATCH", "/u/dev", auth=("u", "pw"), json={"title": "B's title"})
    assert r.status_code == 200, r.text
    result = b.json("GET", "/u/dev").json()["result"]
    assert result["title"] == "B's title" and result["description"] == "another node's change"


def test_nodes_ride_out_a_database_restart(nodes: Any) -> None:
    """Every session of the database is cut (as a restart does): the next write on either
    node lands, and the other node's follower reconnects and serves it; one log line."""
    import psycopg

    from tests.support.pg import PG_URL

    url, a, b = nodes
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(str(PG_URL), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s", (name,))
    r = a.json("PATCH", "/u/dev", auth=("u", "pw"), json={"title": "after the restart"})
    assert r.status_code == 200, r.text
    wait_serial(b, int(r.headers["X-Devpi-Serial"]))
    assert b.json("GET", "/u/dev").json()["result"]["title"] == "after the restart"
    log = b.log()
    assert "cannot follow the database" in log and "following the database failed" not in log
