"""Replication end to end: real primary and replica daemons on loopback.

A replica copies the primary's changelog serial by serial (with the blobs each serial
references), proxies writes, survives its primary going away, and refuses a different
primary behind the same URL.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from devpid.store import open_store
from tests.conftest import Devpid, client_env, init_serverdir, run, tool, twine_upload
from tests.support.polling import serial_of, status, wait_for, wait_serial

UPLOAD_PY = Path(__file__).parent.parent / "devpid" / "web" / "upload.py"


# -- helpers ----------------------------------------------------------------------------------


def changelog(server: Devpid) -> list[tuple[int, dict[str, Any]]]:
    store, _ = open_store(server.serverdir, readonly=True)
    try:
        return store.changelog_since(0, 100000)
    finally:
        store.close()


def root_listing(server: Devpid) -> Any:
    r = requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=5)
    r.raise_for_status()
    return r.json()["result"]


def make_users(server: Devpid, prefix: str, count: int) -> None:
    for n in range(count):
        r = server.json("PUT", f"/{prefix}{n}", json={"password": "pw"})
        assert r.status_code == 201, r.text


def sign(secret: bytes, uuid: str, stamp: int, path: str, query: str = "",
         nonce: str = "0123456789abcdef") -> str:
    """The credentials (``uuid:time:nonce:hmac``) docs/replication.rst specifies."""
    key = hashlib.sha256(b"devpid-replica\0" + secret).digest()
    data = "\n".join(("devpid-replica-v2", uuid, str(stamp), nonce, "GET", path, query))
    return f"{uuid}:{stamp}:{nonce}:" + hmac.new(key, data.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def secretfile(tmp_path: Path) -> Path:
    path = tmp_path / "replication.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return path


@pytest.fixture
def cluster(start_devpid: Any, secretfile: Path) -> Any:
    """Start a primary and replicas sharing ``secretfile``."""

    class Cluster:
        def primary(self, name: str = "primary") -> Devpid:
            return start_devpid("--secretfile", str(secretfile), name=name)  # type: ignore[no-any-return]

        def replica(self, primary: Devpid, name: str = "replica", *extra: str) -> Devpid:
            return start_devpid(  # type: ignore[no-any-return]
                "--primary-url", primary.url, "--secretfile", str(secretfile), *extra,
                init=False, name=name,
            )

    return Cluster()


def restart_on_same_port(server: Devpid, sig: int | None = None) -> None:
    if sig is None:
        server.stop()
    else:
        server.stop(sig)
    server.start()


# -- the changelog endpoint ------------------------------------------------------------------------
def test_changelog_refuses_unauthenticated_and_forged_requests(
    cluster: Any, secretfile: Path
) -> None:
    primary = cluster.primary()
    url = primary.url + "/+changelog?since=0"
    q = "since=0"
    now = int(time.time())
    secret = secretfile.read_bytes()
    forged = [
        {},
        {"Authorization": "Basic cm9vdDpyb290LXNlY3JldA=="},  # root's password is not enough
        {"Authorization": f"DevpidReplica {sign(b'x' * 32, 'abc', now, '/+changelog', q)}"},
        {"Authorization": f"DevpidReplica {sign(secret, 'abc', now - 600, '/+changelog', q)}"},
        {"Authorization": f"DevpidReplica {sign(secret, 'abc', now, '/+blob/x', q)}"},
        {"Authorization": f"DevpidReplica {sign(secret, 'abc', now, '/+changelog', 'since=1')}"},
        {"Authorization": f"DevpidReplica {sign(secret, 'abc', now, '/+changelog', '')}"},
        {"Authorization": "DevpidReplica garbage"},
    ]
    for headers in forged:
        r = requests.get(url, headers=headers, timeout=5)
        assert r.status_code == 403, (headers, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json()["message"]
    sha = "0" * 64
    r = requests.get(primary.url + f"/+blob/{sha}", timeout=5)
    assert r.status_code == 403

    # Properly signed: 200, our content type, the changelog as JSON lines, then held open.
    headers = {"Authorization": f"DevpidReplica {sign(secret, 'abc', now, '/+changelog', q)}"}
    with requests.get(url, headers=headers, stream=True, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/x-devpid-changelog"
        assert int(r.headers["X-Devpid-Serial"]) == 0
        assert r.headers["X-Devpi-Uuid"]
        line = next(line for line in r.iter_lines() if line.strip())
        entry = json.loads(line)
        assert entry["serial"] == 0 and "user/root" in entry["changes"]
    assert "abc" in status(primary)["polling-replicas"]


def test_a_captured_replica_header_fetches_nothing_else_and_only_once(
    cluster: Any, tmp_path: Path
) -> None:
    """A real replica's Authorization header, captured on its way to a fake primary, gets
    nothing from the real primary for another query or path, and is good for one use only."""
    captured: list[tuple[str, str]] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            captured.append((self.path, self.headers["Authorization"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=capture.serve_forever, daemon=True)
    thread.start()
    try:
        fake = Devpid(tmp_path / "fake", port=capture.server_address[1])
        replica = cluster.replica(fake)
        wait_for(lambda: captured, what="the replica's first poll")
        replica.stop()
    finally:
        capture.shutdown()
        capture.server_close()
    path, auth = captured[0]
    assert path.startswith("/+changelog?since=")
    since = int(path.partition("=")[2])
    primary = cluster.primary()
    headers = {"Authorization": auth}
    for other in (f"/+changelog?since={since + 1}", f"/+changelog?since={since}&x=1",
                  "/+changelog", f"/+changelog/{max(since, 0)}", "/+blob/" + "0" * 64):
        with requests.get(primary.url + other, headers=headers, stream=True, timeout=5) as r:
            assert r.status_code == 403, (other, r.status_code)  # (a 200 would stream on)
            assert r.json()["message"]
    with requests.get(primary.url + path, headers=headers, stream=True, timeout=10) as r:
        assert r.status_code == 200  # the request it was made for, within the window
    with requests.get(primary.url + path, headers=headers, stream=True, timeout=5) as r:
        assert r.status_code == 403 and "already used" in r.json()["message"]


# -- following -------------------------------------------------------------------------------------
def test_replica_follows_writes_and_a_late_replica_catches_up_from_zero(cluster: Any) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    make_users(primary, "u", 25)
    for n in range(25):
        r = primary.json("PUT", f"/u{n}/dev", auth=(f"u{n}", "pw"), json={"bases": []})
        assert r.status_code == 200, r.text
    head = serial_of(primary)
    assert head == 50
    wait_serial(replica, head)
    assert root_listing(replica) == root_listing(primary)

    late = cluster.replica(primary, "late")
    wait_serial(late, head)
    assert root_listing(late) == root_listing(primary)
    assert changelog(late) == changelog(primary) == changelog(replica)

    info = status(replica)
    assert info["role"] == "REPLICA"
    assert info["replica"]["serial"] == head
    assert info["replica"]["primary-serial"] == head
    assert info["replica"]["lag"] == 0
    assert info["replica"]["primary-url"] == primary.url
    assert set(status(primary)["polling-replicas"]) >= {
        status(replica)["uuid"], status(late)["uuid"]
    }
    # Responses of a replica name the primary it follows.
    r = requests.get(replica.url + "/+api", timeout=5)
    assert r.headers["X-Devpi-Primary-Uuid"] == status(primary)["uuid"]
    assert r.headers["X-Devpi-Uuid"] == status(replica)["uuid"]
    # ... and what an alert would read: the replica's lag, the primary's followers
    from tests.test_metrics import parse

    metrics = parse(requests.get(replica.url + "/+metrics", timeout=5).text)
    assert metrics["devpid_replica_lag_serials"] == 0
    assert metrics["devpid_replica_in_sync"] == 1
    assert metrics["devpid_replica_primary_serial"] == head
    me = status(replica)
    version, uuid = me["versioninfo"]["devpid"], me["uuid"]
    info_line = f'devpid_info{{version="{version}",role="REPLICA",uuid="{uuid}"}}'
    assert metrics[info_line] == 1
    assert parse(requests.get(primary.url + "/+metrics", timeout=5).text)[
        "devpid_polling_replicas"] >= 2


def test_write_through_replica_is_visible_there_immediately(cluster: Any) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    wait_serial(replica, 0)
    for n in range(5):
        r = replica.json("PUT", f"/viarep{n}", json={"password": "pw"})
        assert r.status_code == 201, r.text
        # No waiting: the proxy answered only after the replica applied the write's serial.
        assert replica.json("GET", f"/viarep{n}").status_code == 200
        assert int(r.headers["X-Devpi-Serial"]) == serial_of(replica)
    # Login and an authenticated write with the token, both through the replica.
    r = requests.post(replica.url + "/+login", json={"user": "viarep0", "password": "pw"},
                      timeout=5)
    assert r.status_code == 200, r.text
    token = r.json()["result"]["password"]
    r = replica.json("PUT", "/viarep0/dev", auth=("viarep0", token), json={})
    assert r.status_code == 200, r.text
    assert replica.json("GET", "/viarep0/dev").status_code == 200
    # Refusals come back unchanged (status and message), and change nothing.
    r = replica.json("PUT", "/viarep0", json={"password": "again"})
    assert r.status_code == 409
    assert r.json()["message"] == "user already exists"
    assert changelog(replica) == changelog(primary)


def test_primary_killed_mid_stream_and_restarted(cluster: Any) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    make_users(primary, "a", 10)
    wait_serial(replica, 10)

    done = threading.Event()

    def writer() -> None:  # keep committing while the primary is killed
        n = 0
        while not done.is_set():
            try:
                primary.json("PUT", f"/b{n}", json={"password": "pw"}, timeout=2)
                n += 1
            except requests.RequestException:
                time.sleep(0.02)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.3)
    primary.kill9()
    time.sleep(0.3)
    assert status(replica)["serial"] >= 10  # reads keep working while the primary is down
    primary.start()
    time.sleep(0.3)
    done.set()
    t.join(10)
    make_users(primary, "c", 5)
    head = serial_of(primary)
    wait_serial(replica, head, timeout=20)
    assert changelog(replica) == changelog(primary)  # no gaps, no duplicates
    assert [s for s, _ in changelog(replica)] == list(range(head + 1))
    assert status(replica)["replica"]["last-error"] is None


def test_replica_killed_and_restarted_continues_consistently(cluster: Any) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    make_users(primary, "k", 15)
    wait_serial(replica, 5)
    replica.kill9()
    make_users(primary, "l", 5)
    replica.start()
    head = serial_of(primary)
    wait_serial(replica, head)
    assert changelog(replica) == changelog(primary)
    assert root_listing(replica) == root_listing(primary)


def test_replica_survives_primary_down_and_garbage(cluster: Any, tmp_path: Path) -> None:
    """Started before its primary exists; then a server sending garbage; then the real one."""
    primary_dir = tmp_path / "primary"
    init_serverdir(primary_dir, None)
    store, _ = open_store(primary_dir, readonly=True)
    primary_uuid = store.uuid
    store.close()

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-devpid-changelog")
            self.send_header("X-Devpi-Uuid", primary_uuid)
            self.send_header("X-Devpid-Serial", "0")
            self.send_header("Content-Length", "22")
            self.end_headers()
            self.wfile.write(b"{not json at all}\n\x00\xff\n")

        def log_message(self, *a: Any) -> None:
            pass

    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    port = garbage.server_address[1]
    # 1. nothing listens on the primary's port yet
    fake_primary = Devpid(primary_dir, port=port)
    garbage.server_close()
    replica = cluster.replica(fake_primary)
    wait_for(lambda: status(replica)["replica"]["last-error"], what="an error to be reported")
    # 2. a server answering garbage
    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", port), Garbage)
    thread = threading.Thread(target=garbage.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: "garbage" in (status(replica)["replica"]["last-error"] or ""),
                 what="garbage to be reported")
        assert status(replica)["serial"] == -1
    finally:
        garbage.shutdown()
        garbage.server_close()
    # 3. the real primary: the replica catches up (backoff is capped, and reset on success)
    fake_primary.args = ["--secretfile", str(tmp_path / "replication.secret")]
    fake_primary.start()
    try:
        make_users(fake_primary, "g", 3)
        wait_serial(replica, 3, timeout=25)
        assert changelog(replica) == changelog(fake_primary)
        wait_for(lambda: status(replica)["replica"]["last-error"] is None, what="no error")
    finally:
        fake_primary.stop()


def test_replica_retrying_a_down_primary_logs_one_warning_line_per_attempt(
    cluster: Any, tmp_path: Path
) -> None:
    """A primary that is down is ordinary: each retry is one warning line, no traceback."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    replica = cluster.replica(Devpid(tmp_path / "nowhere", port=port))
    wait_for(lambda: status(replica)["replica"]["polls"] >= 3, timeout=20, what="3 attempts")
    polls = status(replica)["replica"]["polls"]
    log = replica.log()
    lines = [line for line in log.splitlines() if "replication from" in line]
    assert "Traceback" not in log and "#critical" not in log, log
    assert len(lines) >= polls - 1, log
    assert all("#warn" in line and "connection refused" in line.lower() for line in lines), lines


def test_replica_refuses_a_different_primary(cluster: Any, start_devpid: Any) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    make_users(primary, "p", 3)
    wait_serial(replica, 3)
    port = primary.port
    primary.stop()
    other = cluster.primary("other")  # another server (another uuid) ...
    other.stop()
    other.port = port  # ... now behind the same URL
    other.start()
    make_users(other, "q", 5)
    info = wait_for(lambda: status(replica)["replica"]["refused"], what="refusal")
    assert status(other)["uuid"] in info
    assert serial_of(replica) == 3
    assert replica.json("GET", "/p0").status_code == 200  # reads are still served
    assert replica.json("GET", "/q0").status_code == 404
    assert "refused" in replica.log()


# -- release files -----------------------------------------------------------------------------
needs_uploads = pytest.mark.skipif(
    not UPLOAD_PY.exists(), reason="devpid/web/upload.py not written yet"
)


@needs_uploads
def test_uploaded_files_replicate_byte_for_byte(cluster: Any, tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    env = client_env(tmp_path)
    primary = cluster.primary()
    replica = cluster.replica(primary)
    assert primary.json("PUT", "/u", json={"password": "pw"}).status_code == 201
    assert primary.json("PUT", "/u/i", auth=("u", "pw"), json={"bases": []}).status_code == 200
    dist = tmp_path / "dist"
    dist.mkdir()
    wheels = [make_wheel(dist, "repl-pkg", f"1.{n}", extra_bytes=20000) for n in range(2)]
    run([tool("twine"), "upload", "--repository-url", primary.url + "/u/i/", "-u", "u",
         "-p", "pw", str(wheels[0])], env)
    # ... and one uploaded through the replica: visible there as soon as twine returns
    run([tool("twine"), "upload", "--repository-url", replica.url + "/u/i/", "-u", "u",
         "-p", "pw", str(wheels[1])], env)
    page_r = requests.get(replica.url + "/u/i/+simple/repl-pkg/", timeout=5)
    assert page_r.status_code == 200
    assert wheels[1].name in page_r.text
    wait_serial(replica, serial_of(primary))
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    pages = [requests.get(s.url + "/u/i/+simple/repl-pkg/", headers=accept, timeout=5).json()
             for s in (primary, replica)]
    files = pages[1]["files"]
    assert sorted(f["filename"] for f in files) == sorted(w.name for w in wheels)
    assert [f["hashes"] for f in pages[0]["files"]] == [f["hashes"] for f in files]
    _, replica_blobs = open_store(replica.serverdir, readonly=True)
    for f in files:
        sha = f["hashes"]["sha256"]
        original = (dist / f["filename"]).read_bytes()
        assert replica_blobs.path(sha).read_bytes() == original  # copied and verified
        assert replica_blobs.path(f["core-metadata"]["sha256"]).is_file()
        url = urljoin(replica.url + "/u/i/+simple/repl-pkg/", f["url"])
        assert requests.get(url, timeout=5).content == original  # and served by the replica
    assert changelog(replica) == changelog(primary)


@needs_uploads
def test_late_replica_copies_files_and_installs(cluster: Any, tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    env = client_env(tmp_path)
    primary = cluster.primary()
    assert primary.json("PUT", "/u", json={"password": "pw"}).status_code == 201
    assert primary.json("PUT", "/u/i", auth=("u", "pw"), json={"bases": []}).status_code == 200
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = make_wheel(dist, "late-pkg", "2.0")
    run([tool("twine"), "upload", "--repository-url", primary.url + "/u/i/", "-u", "u",
         "-p", "pw", str(wheel)], env)
    replica = cluster.replica(primary, "late")
    wait_serial(replica, serial_of(primary))
    target = tmp_path / "target"
    run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
         replica.url + "/u/i/+simple/", "late-pkg==2.0"], env)
    assert any(p.name.startswith("late_pkg") for p in target.iterdir())



def test_replica_serves_mirror_projects_it_never_saw(
    start_devpid: Any, secretfile: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A replica asks its primary (which fetches and records upstream pages) and streams
    uncached mirror files from the upstream itself, verifying the published hash."""
    from tests.conftest import run, tool
    from tests.support.fakepypi import FakePyPI

    fake = FakePyPI(tmp_path / "up")
    fake.start()
    try:
        fake.publish("via-replica", "1.0")
        fake.publish("via-replica", "2.0")
        primary = start_devpid("--secretfile", str(secretfile), name="primary",
                               upstream_url=fake.url)
        replica = start_devpid("--primary-url", primary.url, "--secretfile", str(secretfile),
                               init=False, name="replica")
        index = replica.url + "/root/pypi/+simple/"
        proc = run([tool("pip"), "download", "--no-deps", "-d", str(tmp_path / "d"), "-i",
                    index, "via-replica"], env)
        assert "via_replica-2.0" in proc.stdout
        accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
        on_replica = requests.get(index + "via-replica/", headers=accept).json()
        on_primary = requests.get(primary.url + "/root/pypi/+simple/via-replica/",
                                  headers=accept).json()
        assert on_replica["files"] == on_primary["files"]
    finally:
        fake.close()


def test_deletions_free_the_disk_on_primary_and_replicas(cluster: Any, tmp_path: Path) -> None:
    """Both sides sweep a deleted file once the deletion is replicated; a replica started
    afterwards replays the upload, finds the file gone on the primary (410) and moves on."""
    from devpid.blobgc import stored_blobs
    from tests.support.pkgbuild import make_wheel

    env = client_env(tmp_path)
    gc = ("--gc-interval", "1", "--gc-grace", "2")
    primary = cluster.primary()
    primary.stop()
    primary.args += list(gc)
    primary.start()
    replica = cluster.replica(primary, "replica", *gc)
    assert primary.json("PUT", "/u", json={"password": "pw"}).status_code == 201
    assert primary.json("PUT", "/u/i", auth=("u", "pw"), json={"bases": []}).status_code == 200
    wheels = [make_wheel(tmp_path / "dist", "gc-pkg", v, extra_bytes=50000) for v in ("1", "2")]
    twine_upload(primary.url + "/u/i/", ("u", "pw"), env, *wheels)
    wait_serial(replica, serial_of(primary))

    def count(server: Devpid) -> int:
        return len(list(stored_blobs(server.serverdir / "+blobs")))

    assert count(primary) == count(replica) == 4
    assert primary.json("DELETE", "/u/i/gc-pkg/1", auth=("u", "pw")).status_code == 200
    wait_serial(replica, serial_of(primary))
    wait_for(lambda: count(primary) == 2 and count(replica) == 2, 20, "both sides swept")
    late = cluster.replica(primary, "late")
    wait_serial(late, serial_of(primary))
    assert count(late) == 2
    assert "is gone on the primary" in late.log()
    for server in (replica, late):
        target = tmp_path / f"target-{server.port}"
        run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
             server.url + "/u/i/+simple/", "gc-pkg"], env)
        assert any(p.name == "gc_pkg-2.dist-info" for p in target.iterdir())


@pytest.mark.slow
def test_a_committed_serial_of_any_size_replicates(cluster: Any) -> None:
    """A serial larger than any line limit (one committed before records were bounded, like
    the 280 MB release of issue 19) streams to the replica, which then goes on following."""
    primary = cluster.primary()
    make_users(primary, "s", 1)
    primary.stop()
    store, _ = open_store(primary.serverdir)
    big = "x" * (257 * 1024 * 1024)  # above the old 256 MiB changelog line limit
    with store.transaction() as tx:
        tx.set("user/bigdesc", {"pwhash": "", "created": "2026", "description": big})
    big_serial = store.serial
    store.close()
    del big
    primary.start()
    make_users(primary, "after", 1)
    replica = cluster.replica(primary)
    wait_serial(replica, big_serial + 1, timeout=120)
    wait_for(lambda: status(replica)["replica"]["last-error"] is None, what="no error")
    store, _ = open_store(replica.serverdir, readonly=True)
    try:
        value = store.get("user/bigdesc")
        assert value is not None and len(value["description"]) == 257 * 1024 * 1024
    finally:
        store.close()
    assert replica.json("GET", "/after0").status_code == 200  # and it went on following


def test_nonce_guard_remembers_nonces_for_the_window_only() -> None:
    """Pure logic: a nonce is good once; it is forgotten only once its timestamp is stale."""
    from devpid.replica import CLOCK_SKEW, NonceGuard

    guard = NonceGuard()
    assert guard.first_use("a" * 32, 1000.0)
    assert not guard.first_use("a" * 32, 1000.0 + CLOCK_SKEW)
    assert guard.first_use("b" * 32, 1000.0 + 2 * CLOCK_SKEW + 2)
    assert "a" * 32 not in guard.seen and len(guard.seen) == 1
