"""Torture: kill -9 at random moments of writes, mirror downloads under upstream faults,
``--workers N``, ``devpid export``, ``devpid import`` and a gc sweep; then check the server.

After every kill the server directory must be consistent: the server starts, serves every
committed file (uploads and cached mirror files) with its recorded sha256, nothing a client
was told is stored is missing, and ``devpid export`` runs again. Export, import and gc are
also re-run to completion after being killed.

Bounded: the short form (CI, the default) runs a few trials of each kind; set
``DEVPID_TORTURE=N`` for N times as many (e.g. ``DEVPID_TORTURE=20`` before a release). The
counts are printed at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from devpid.store import keys, open_store
from tests.conftest import ROOT_PASSWORD, Devpid, init_serverdir, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import make_wheel
from tests.test_workers import worker_pids

pytestmark = pytest.mark.slow
SCALE = max(1, int(os.environ.get("DEVPID_TORTURE", "1") or "1"))
SEED = int(os.environ.get("DEVPID_TORTURE_SEED", str(time.time_ns() % 10**9)))
RNG = random.Random(SEED)
COUNTS: Counter[str] = Counter()  # trials per kind, and checks that passed
JSON = "application/vnd.pypi.simple.v1+json"
UPSTREAM_MODES = ["slow", "ok", "error", "hang"]  # FakePyPI modes, one per trial in turn


@pytest.fixture(scope="module", autouse=True)
def report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what was tried, also without ``-s`` (the terminal reporter always shows)."""
    yield
    kills = sum(n for k, n in COUNTS.items() if k.startswith("kill -9"))
    lines = [f"torture (DEVPID_TORTURE={SCALE}, DEVPID_TORTURE_SEED={SEED}): {kills} kill -9 "
             "trials, "
             f"{COUNTS['consistent']} consistency checks passed, "
             f"{COUNTS['files verified']} file downloads verified by sha256"]
    lines += [f"  {kind}: {n}" for kind, n in sorted(COUNTS.items())]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        print("\n" + "\n".join(lines), flush=True)


# -- helpers ------------------------------------------------------------------------------------
def start(serverdir: Path, *args: str) -> Devpid:
    return Devpid(serverdir, args=list(args)).start(timeout=30)


def kill9(server: Devpid) -> None:
    """kill -9 the main process; its workers (``--workers``) follow it, as they should."""
    workers = worker_pids(server) if server.proc is not None else []
    server.kill9()
    deadline = time.monotonic() + 15
    for pid in workers:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"worker {pid} outlived its killed main process"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def kill9_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(15)


def committed_files(serverdir: Path) -> dict[str, dict[str, Any]]:
    """Every ``file/`` and ``doc/`` record (path -> value), read as another process would."""
    store, _ = open_store(serverdir, readonly=True)
    try:
        out = {}
        for prefix in ("file/", "doc/"):
            for _, value in store.items(prefix):
                if isinstance(value, dict) and value.get("path") and value.get("sha256"):
                    out[value["path"]] = value
        return out
    finally:
        store.close()


def check_consistent(server: Devpid, work: Path) -> int:
    """Started server: every committed file downloads with its sha256; export runs. Returns
    the number of files checked."""
    files = committed_files(server.serverdir)
    with requests.Session() as s:
        for path, value in files.items():
            r = s.get(f"{server.url}/{path}", timeout=30)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            assert hashlib.sha256(r.content).hexdigest() == value["sha256"], path
            COUNTS["files verified"] += 1
    target = work / f"export-check-{time.monotonic_ns()}"
    proc = run([tool("devpid"), "export", "--serverdir", str(server.serverdir), str(target)],
               dict(os.environ))
    assert "exported" in (proc.stdout + proc.stderr).lower() or (target / "devpid-dump.json"
                                                                 ).exists()
    COUNTS["consistent"] += 1
    return len(files)


def upload_script() -> str:
    """A writer process: uploads every wheel in a directory, records each acknowledged one."""
    return (
        "import hashlib, pathlib, sys, requests\n"
        "url, acked = sys.argv[1], open(sys.argv[3], 'a')\n"
        "for p in sorted(pathlib.Path(sys.argv[2]).glob('*.whl')):\n"
        "    data = p.read_bytes()\n"
        "    name, version = p.name.split('-')[:2]\n"
        "    fields = {':action': 'file_upload', 'protocol_version': '1', 'name': name,\n"
        "              'version': version, 'sha256_digest': hashlib.sha256(data).hexdigest(),\n"
        "              'filetype': 'bdist_wheel', 'pyversion': 'py3', 'metadata_version': '2.1'}\n"
        "    try:\n"
        "        r = requests.post(url, data=fields, files={'content': (p.name, data)},\n"
        "                          auth=('t', 'pw'), timeout=10)\n"
        "    except requests.RequestException:\n"
        "        break\n"
        "    if r.status_code == 200:\n"
        "        acked.write(p.name + '\\n'); acked.flush()\n"
    )


def file_url(server: Devpid, project: str, page: dict[str, Any]) -> str:
    return urljoin(f"{server.url}/root/pypi/+simple/{project}/", page["files"][0]["url"])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# -- writes, with and without --workers --------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_kill9_during_uploads_loses_nothing_acknowledged(tmp_path: Path, workers: str) -> None:
    serverdir = tmp_path / "server"
    init_serverdir(serverdir, None)
    server = start(serverdir, "--workers", workers)
    try:
        assert server.json("PUT", "/t", json={"password": "pw"}).status_code == 201
        assert server.json("PUT", "/t/dev", auth=("t", "pw"), json={}).ok
        acked = tmp_path / "acked.txt"
        for trial in range(2 * SCALE):
            wheels = tmp_path / f"wheels{trial}"
            wheels.mkdir()
            for n in range(40):
                make_wheel(wheels, f"tortured{trial}", f"1.{n}", extra_bytes=20_000)
            writer = subprocess.Popen([sys.executable, "-c", upload_script(),
                                       f"{server.url}/t/dev/", str(wheels), str(acked)])
            # kill once some uploads went through, at a random moment after that
            wait_until(lambda: acked.exists() and len(acked.read_text().split()) > 0)
            time.sleep(RNG.uniform(0.0, 0.6))
            kill9(server)
            COUNTS[f"kill -9 during uploads (--workers {workers})"] += 1
            writer.wait(30)
            server = start(serverdir, "--workers", workers)
            stored = {v["filename"] for v in committed_files(serverdir).values()}
            missing = set(acked.read_text().split()) - stored
            assert not missing, f"acknowledged uploads lost after kill -9: {missing}"
            check_consistent(server, tmp_path)
        # still writable, one serial further
        serial = int(server.json("GET", "/+api").headers["X-Devpi-Serial"])
        r = server.json("PUT", "/t/after", auth=("t", "pw"), json={})
        assert int(r.headers["X-Devpi-Serial"]) == serial + 1
    finally:
        server.stop()


# -- mirror downloads under upstream faults, then offline mode ----------------------------------
def test_kill9_during_mirror_downloads_under_faults_then_offline(tmp_path: Path) -> None:
    fake = FakePyPI(tmp_path / "upstream", slow_rate=256 * 1024)
    fake.start()
    serverdir = tmp_path / "server"
    init_serverdir(serverdir, fake.url)
    names = []
    for n in range(6):
        names.append(fake.publish(f"faulty{n}", "1.0", extra_bytes=600_000).name)
    server = start(serverdir, "--request-timeout", "3")
    try:
        for trial in range(SCALE):
            fake.clear_faults()
            fake.corrupt(names[1])
            fake.truncate(names[2])
            # slow first: the kill then lands in the middle of streaming downloads
            fake.mode = UPSTREAM_MODES[trial % len(UPSTREAM_MODES)]
            results: list[int] = []

            def fetch(filename: str, server: Devpid, results: list[int]) -> None:
                project = filename.split("-")[0]
                try:
                    page = requests.get(f"{server.url}/root/pypi/+simple/{project}/",
                                        headers={"Accept": JSON}, timeout=10).json()
                    r = requests.get(file_url(server, project, page), timeout=10)
                    results.append(r.status_code)
                except (requests.RequestException, ValueError, KeyError, IndexError):
                    results.append(-1)

            threads = [threading.Thread(target=fetch, args=(f, server, results))
                       for f in names]
            for t in threads:
                t.start()
            time.sleep(RNG.uniform(0.2, 1.2))
            kill9(server)
            COUNTS[f"kill -9 during mirror downloads (upstream {fake.mode}, corrupt, "
                   f"truncated)"] += 1
            for t in threads:
                t.join(30)
            assert 500 not in results
            # offline: what was committed is served, the rest is refused clearly
            server = start(serverdir, "--offline-mode")
            cached = check_consistent(server, tmp_path)
            for filename in (names[1], names[2]):  # never stored: bad bytes or cut short
                assert not any(v["filename"] == filename
                               for v in committed_files(serverdir).values())
            uncached = [n for n in names
                        if n not in {v["filename"] for v in committed_files(serverdir).values()}]
            for filename in uncached:
                project = filename.split("-")[0]
                r = requests.get(f"{server.url}/root/pypi/+simple/{project}/",
                                 headers={"Accept": JSON}, timeout=10)
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:  # offline pages list only cached files
                    assert r.json()["files"] == []
            COUNTS["offline restarts checked"] += 1
            assert cached <= len(names) - 2
            server.stop()
            server = start(serverdir, "--request-timeout", "3")
        # faults gone: every good file arrives, with the upstream's bytes
        fake.clear_faults()
        for filename in names:
            project = filename.split("-")[0]
            page = requests.get(f"{server.url}/root/pypi/+simple/{project}/",
                                headers={"Accept": JSON}, timeout=10).json()
            r = requests.get(file_url(server, project, page), timeout=30)
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == fake.sha256(filename)
        check_consistent(server, tmp_path)
    finally:
        server.stop()
        fake.close()


# -- export, import and gc killed half-way -------------------------------------------------------
@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A stopped server directory with 60 uploaded files (~15 MB)."""
    serverdir = tmp_path / "filled"
    init_serverdir(serverdir, None)
    server = start(serverdir)
    try:
        assert server.json("PUT", "/t", json={"password": "pw"}).status_code == 201
        assert server.json("PUT", "/t/dev", auth=("t", "pw"), json={}).ok
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        for n in range(60):
            make_wheel(wheels, "filler", f"1.{n}", extra_bytes=250_000)
        run([sys.executable, "-c", upload_script(), f"{server.url}/t/dev/", str(wheels),
             str(tmp_path / "acked.txt")], dict(os.environ))
        assert len((tmp_path / "acked.txt").read_text().split()) == 60
    finally:
        server.stop()
    return serverdir


def add_garbage(serverdir: Path, count: int) -> None:
    """Old unreferenced blobs: what deletions leave for the next sweep."""
    store, blobs = open_store(serverdir)
    store.close()
    old = time.time() - 10 * 86400
    for n in range(count):
        digest = blobs.put_bytes(f"garbage {n} {time.monotonic_ns()} ".encode() * 100)
        os.utime(blobs.path(digest), (old, old))


def _run_killed(cmd: list[str], started: Callable[[], bool]) -> bool:
    """Run ``cmd``, kill -9 it at a random moment once ``started()``; True if it was still
    running when killed (False: it finished first, which is a valid outcome too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: started() or proc.poll() is not None)
        time.sleep(RNG.uniform(0.0, 0.3))
        running = proc.poll() is None
    finally:
        kill9_process(proc)
    return running


def count_blobs(serverdir: Path) -> int:
    return sum(1 for p in (serverdir / "+blobs").rglob("*") if p.is_file())


def _stale_temps(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.tmp-*"))


def test_kill9_during_export_import_and_gc(tmp_path: Path, filled: Path) -> None:
    devpid = tool("devpid")
    expected = committed_files(filled)
    for trial in range(SCALE):
        # export, killed while it copies blobs; a re-run completes
        target = tmp_path / f"dump{trial}"
        killed = _run_killed([devpid, "export", "--serverdir", str(filled), str(target)],
                             lambda t=target: bool(_stale_temps(tmp_path, t.name)))
        COUNTS["kill -9 during devpid export"] += 1
        COUNTS["(kills that hit a running export, import or gc)"] += int(killed)
        assert not target.exists() or (target / "devpid-dump.json").exists()
        COUNTS["partial exports left by a kill -9"] += len(_stale_temps(tmp_path, target.name))
        run([devpid, "export", "--force", "--serverdir", str(filled), str(target)],
            dict(os.environ))
        # the re-run removed what the killed run left behind (a partial copy of every blob)
        assert _stale_temps(tmp_path, target.name) == []
        # import, killed half-way: the target is absent or complete; a re-run completes
        imported = tmp_path / f"imported{trial}"
        killed = _run_killed([devpid, "import", "--serverdir", str(imported), str(target),
                              "--bcrypt-rounds", "4"],
                             lambda t=imported: bool(_stale_temps(tmp_path, t.name)))
        COUNTS["kill -9 during devpid import"] += 1
        COUNTS["(kills that hit a running export, import or gc)"] += int(killed)
        COUNTS["partial imports left by a kill -9"] += len(
            _stale_temps(tmp_path, imported.name))
        if not (imported / "devpid.sqlite").exists():
            assert not imported.exists() or not any(imported.iterdir())
            run([devpid, "import", "--serverdir", str(imported), str(target),
                 "--bcrypt-rounds", "4"], dict(os.environ))
        assert _stale_temps(tmp_path, imported.name) == []
        assert committed_files(imported) == expected
        # gc, killed while it deletes garbage, with the server running; a re-run completes
        add_garbage(imported, 600)
        blob_count = count_blobs(imported)
        server = start(imported)
        try:
            killed = _run_killed(
                [devpid, "gc", "--serverdir", str(imported)],
                lambda d=imported, n=blob_count: count_blobs(d) < n,
            )
            COUNTS["kill -9 during a gc sweep"] += 1
            COUNTS["(kills that hit a running export, import or gc)"] += int(killed)
            kill9(server)  # and the server with it, mid-whatever it was doing
            COUNTS["kill -9 of the server during a gc sweep"] += 1
            server = start(imported)
            assert check_consistent(server, tmp_path) == len(expected)
            assert server.login("root", ROOT_PASSWORD)
            run([devpid, "gc", "--serverdir", str(imported)], dict(os.environ))
            assert check_consistent(server, tmp_path) == len(expected)
        finally:
            server.stop()
        # the source itself is untouched by all this
        server = start(filled)
        try:
            check_consistent(server, tmp_path)
        finally:
            server.stop()
    # the dumps of every trial are complete and verify on import
    for trial in range(SCALE):
        store, _ = open_store(tmp_path / f"imported{trial}", readonly=True)
        try:
            assert store.get(keys.user("t")) is not None
        finally:
            store.close()
    assert json.loads((tmp_path / "dump0" / "devpid-dump.json").read_text())["format"] == (
        "devpid-dump")
