"""``--workers N`` with ``--store postgresql://``: the processes share the node's view.

The main process follows the database; workers read the view it keeps current and forward
their writes to it. Real daemons, real twine and pip on one port, a second node on the
same database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import (
    ROOT_PASSWORD,
    Devpid,
    client_env,
    init_serverdir,
    run,
    tool,
    twine_upload,
)
from tests.support.fakepypi import FakePyPI
from tests.support.pg import requires_pg
from tests.support.pkgbuild import make_wheel
from tests.support.polling import wait_serial
from tests.test_workers import worker_pids

pytestmark = requires_pg


def _process_sessions(server: Devpid) -> dict[str, requests.Session]:
    """A keep-alive connection to each process: {"main": ..., "worker": ...}."""
    found: dict[str, requests.Session] = {}
    deadline = time.monotonic() + 20
    while len(found) < 2:
        assert time.monotonic() < deadline, f"only reached {sorted(found)}"
        s = requests.Session()
        status = s.get(server.url + "/+status", headers={"Accept": "application/json"})
        kind = "main" if "running" in status.json()["result"].get("workers", {}) else "worker"
        if kind in found:
            s.close()
        else:
            found[kind] = s
    return found


def _title(session: requests.Session, server: Devpid) -> Any:
    r = session.get(server.url + "/u/dev", headers={"Accept": "application/json"})
    assert r.ok, r.text
    return r.json()["result"].get("title")


def test_workers_on_postgresql(tmp_path: Path) -> None:
    from tests.support.pg import fresh_database

    url = fresh_database()
    init_serverdir(tmp_path / "a", None, root_pypi=False, store=url)
    a = Devpid(tmp_path / "a", args=["--workers", "2", "--store", url])
    b = Devpid(tmp_path / "b", args=["--store", url])
    sessions: dict[str, requests.Session] = {}
    try:
        a.start()
        deadline = time.monotonic() + 20
        while not worker_pids(a):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        b.start()
        env = client_env(tmp_path)
        assert a.json("PUT", "/u", json={"password": "pw"}).status_code == 201
        assert a.json("PUT", "/u/dev", auth=("u", "pw"), json={"bases": []}).ok
        for minor in range(3):  # each upload lands on either process; writes go to main
            wheel = make_wheel(tmp_path, "pg-workers", f"1.{minor}")
            twine_upload(f"{a.url}/u/dev/", ("u", "pw"), env, wheel)
        target = tmp_path / "target"
        run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
             a.url + "/u/dev/+simple/", "pg-workers==1.2"], env)
        assert any(p.name.startswith("pg_workers-1.2") for p in target.iterdir())

        sessions.update(_process_sessions(a))
        # a write made by another node reaches the view of every process of node A
        r = b.json("PATCH", "/u/dev", auth=("u", "pw"), json={"title": "from node b"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while any(_title(s, a) != "from node b" for s in sessions.values()):
            assert time.monotonic() < deadline, "a process of node A never saw B's write"
            time.sleep(0.05)
        # and a write through node A's worker is served by node B
        r = sessions["worker"].patch(a.url + "/u/dev", auth=("u", "pw"),
                                     json={"title": "via the worker"},
                                     headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        serial = int(r.headers["X-Devpi-Serial"])
        assert _title(sessions["worker"], a) == "via the worker"  # at once: its own serial
        deadline = time.monotonic() + 15
        while b.json("GET", "/u/dev").json()["result"].get("title") != "via the worker":
            assert time.monotonic() < deadline, f"node B never reached serial {serial}"
            time.sleep(0.05)
        # mirror records a worker writes go to the database too: every node serves them
        up = FakePyPI(tmp_path / "up").start()
        try:
            up.publish("mirrored-pkg", "1")
            r = a.json("PUT", "/u/mirror", auth=("root", ROOT_PASSWORD),
                       json={"type": "mirror", "mirror_url": up.url})
            assert r.status_code == 200, r.text
            filename = "mirrored_pkg-1-py3-none-any.whl"
            sha = up.sha256(filename)
            for kind in ("worker", "main"):
                page = sessions[kind].get(f"{a.url}/u/mirror/+simple/mirrored-pkg/")
                assert page.ok and filename in page.text, (kind, page.text)
            r = sessions["worker"].get(f"{a.url}/u/mirror/+f/{sha[:3]}/{sha[3:16]}/{filename}")
            assert r.ok and r.content[:2] == b"PK"
            serial = int(r.headers["X-Devpi-Serial"])
            wait_serial(b, serial)
            assert requests.get(f"{b.url}/u/mirror/+simple/mirrored-pkg/").ok
        finally:
            up.close()
        for log in (a.log(), b.log()):
            assert "Traceback" not in log and "exited" not in log, log
    finally:
        for s in sessions.values():
            s.close()
        a.stop()
        b.stop()
