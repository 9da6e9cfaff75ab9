"""``--workers N``: several processes on one socket; a write in one is visible in all."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import Devpid, run, tool
from tests.support.pkgbuild import make_wheel

ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}


def worker_pids(server: Devpid) -> list[int]:
    assert server.proc is not None
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"PPid:\t{server.proc.pid}\n" in status and b"devpid.workers" in cmdline:
                pids.append(int(entry))
    return pids


def main_status(server: Devpid) -> dict[str, Any]:
    """/+status as the main process answers it (any process may take a new connection;
    only the main one knows how its workers are doing)."""
    for _ in range(200):
        status: dict[str, Any] = server.json("GET", "/+status").json()["result"]
        if "running" in status.get("workers", {}):
            return status
    raise AssertionError("no answer from the main process in 200 tries")


def test_writes_are_visible_in_every_process_at_once(start_devpid: Any, tmp_path: Path,
                                                     env: dict[str, str]) -> None:
    server: Devpid = start_devpid("--workers", "3")
    deadline = time.monotonic() + 20
    while len(worker_pids(server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(worker_pids(server)) == 2
    assert server.json("PUT", "/wk", json={"password": "pw"}).status_code == 201
    assert server.json("PUT", "/wk/dev", auth=("wk", "pw"), json={}).ok
    for minor in range(6):
        wheel = make_wheel(tmp_path, "multi-proc", f"1.{minor}")
        run([tool("twine"), "upload", "--repository-url", f"{server.url}/wk/dev/", "-u", "wk",
             "-p", "pw", str(wheel)], env)
        # new connections land on different processes: every one sees the new release
        for _ in range(8):
            with requests.Session() as s:
                page = s.get(f"{server.url}/wk/dev/+simple/multi-proc/", headers=ACCEPT)
            assert page.ok and page.json()["versions"][-1] == f"1.{minor}"
    serials = {int(requests.get(server.url + "/+api").headers["X-Devpi-Serial"])
               for _ in range(12)}
    assert len(serials) == 1
    status = main_status(server)
    assert status["workers"]["running"] == 3
    assert status["workers"]["restarts"] == 0
    assert "exited" not in server.log()


def test_a_dead_worker_is_restarted(start_devpid: Any) -> None:
    server: Devpid = start_devpid("--workers", "2")
    deadline = time.monotonic() + 20
    while not worker_pids(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    (pid,) = worker_pids(server)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if pids and pids != [pid]:
            break
        time.sleep(0.2)
    assert pids and pids != [pid]
    for _ in range(6):
        assert requests.get(server.url + "/+api").ok
    assert main_status(server)["workers"]["restarts"] >= 1
    server.stop()
    time.sleep(0.5)
    assert not Path(f"/proc/{pids[0]}").exists() or b"zombie" in Path(
        f"/proc/{pids[0]}/status").read_bytes().lower()


def test_workers_forward_their_own_conclusion_not_the_clients_headers(
        start_devpid: Any) -> None:
    """With --trusted-proxy leaving out loopback, a client's X-Real-IP counts nowhere, also
    not when a worker forwards its login to the main process (which trusts its workers)."""
    server: Devpid = start_devpid("--workers", "2", "--trusted-proxy", "192.0.2.7",
                                  "--max-login-failures", "1")  # 3 per address
    deadline = time.monotonic() + 20
    while len(worker_pids(server)) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in ("w0", "w1", "w2", "w9"):
        assert server.json("PUT", f"/{name}", json={"password": "pw"}).status_code == 201

    def on_worker() -> requests.Session:
        """A keep-alive connection a worker accepted (its /+status says so)."""
        deadline = time.monotonic() + 20  # (the worker may still be starting)
        while time.monotonic() < deadline:
            s = requests.Session()
            status = s.get(server.url + "/+status", headers={"Accept": "application/json"})
            if "running" not in status.json()["result"].get("workers", {}):
                return s
            s.close()
            time.sleep(0.02)
        raise AssertionError("no connection landed on the worker")

    codes = []
    for n in range(3):
        with on_worker() as s:
            codes.append(s.post(server.url + "/+login", json={"user": f"w{n}", "password": "x"},
                                headers={"X-Real-IP": f"192.0.2.{n + 10}"}).status_code)
    assert codes == [401] * 3, codes
    with on_worker() as s:
        r = s.post(server.url + "/+login", json={"user": "w9", "password": "x"},
                   headers={"X-Real-IP": "192.0.2.50"})
    assert r.status_code == 429, r.text  # every one came from 127.0.0.1, whatever it said
