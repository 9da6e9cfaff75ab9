"""Events: hooks see every serial once and in order, survive failures, resume after restarts.

Unit tests drive the EventService over a real SQLite store with ``task.Clock`` (no sleeping);
end-to-end tests run real daemons: an entry-point hook loaded from the environment, and a
real webhook receiver getting each uploaded file exactly once.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from twisted.internet import defer
from twisted.internet.task import Clock

from devpid.events import MAX_ATTEMPTS, SAVE_DELAY, EventService, WebhookHook
from devpid.store import open_store
from devpid.store.sqlite import SQLiteStore
from tests.conftest import Devpid, client_env, run, tool
from tests.test_replication import UPLOAD_PY, serial_of, status, wait_for, wait_serial


class Recorder:
    """A hook that records what it saw and fails when ``fail(serial, attempt)`` says so."""

    def __init__(self, fail: Callable[[int, int], bool] = lambda s, a: False) -> None:
        self.fail = fail
        self.seen: list[int] = []
        self.attempts: Counter[int] = Counter()

    async def on_serial(self, serial: int, changes: dict[str, Any]) -> None:
        self.attempts[serial] += 1
        if self.fail(serial, self.attempts[serial]):
            raise RuntimeError(f"hook failure on serial {serial}")
        self.seen.append(serial)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s, _ = open_store(tmp_path)
    with s.transaction() as tx:
        tx.set("user/root", {"pwhash": "x"})
    yield s
    s.close()


def commit(store: SQLiteStore, n: int, prefix: str = "user/x") -> None:
    for i in range(n):
        with store.transaction() as tx:
            tx.set(f"{prefix}{store.serial + 1}-{i}", {"n": i})


def drive(clock: Clock, done: Callable[[], bool], limit: float = 600.0) -> None:
    """Advance fake time until ``done`` (retries and backoff take no real time)."""
    clock.advance(0)
    elapsed = 0.0
    while not done() and elapsed < limit:
        clock.advance(0.25)
        elapsed += 0.25
    assert done(), "event processing did not finish"


def test_hook_failing_every_third_serial_still_reaches_the_head(
    store: SQLiteStore, tmp_path: Path
) -> None:
    clock = Clock()
    flaky = Recorder(lambda serial, attempt: serial % 3 == 0)
    good = Recorder()
    svc = EventService(store, tmp_path, clock, {"flaky": flaky, "good": good}, horizon=10.0)
    svc.startService()
    commit(store, 10)
    clock.advance(0)
    # The healthy hook is not held up by the failing one.
    assert good.seen == list(range(1, 11))
    assert svc.runners["flaky"].done == 2
    drive(clock, lambda: svc.event_serial == store.serial)
    assert flaky.seen == [s for s in range(1, 11) if s % 3]
    # backoff 0.5, 1, 2, 4 s: the fifth attempt (at 7.5 s) is the last within 10 s
    assert all(flaky.attempts[s] == 5 for s in (3, 6, 9))
    assert svc.runners["flaky"].failed == [3, 6, 9]
    assert good.seen == list(range(1, 11))  # still exactly once each
    clock.advance(SAVE_DELAY)  # cursors are written at most every SAVE_DELAY seconds
    state = json.loads((tmp_path / ".event-serial").read_text())
    assert state == {"serial": 10, "hooks": {"flaky": 10, "good": 10},
                     "failed": {"flaky": [3, 6, 9]}}
    svc.stopService()


def test_a_failing_hook_keeps_retrying_for_hours_by_default(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """A receiver down for an hour loses nothing: the serial is retried, not given up."""
    clock = Clock()
    down = {"until": 3600.0}
    hook = Recorder(lambda serial, attempt: clock.seconds() < down["until"])
    svc = EventService(store, tmp_path, clock, {"h": hook})
    svc.startService()
    commit(store, 1)
    for _ in range(4000):  # an hour and a bit, in fake seconds
        clock.advance(1)
    assert hook.seen == [1]
    assert svc.runners["h"].failed == []
    assert 10 < hook.attempts[1] < 40  # backed off (capped), not hammered nor given up
    svc.stopService()


def test_given_up_serials_survive_a_restart_and_can_be_retried(
    store: SQLiteStore, tmp_path: Path
) -> None:
    clock = Clock()
    broken = {"on": True}
    hook = Recorder(lambda serial, attempt: broken["on"] and serial == 2)
    svc = EventService(store, tmp_path, clock, {"h": hook}, horizon=5.0)
    svc.startService()
    commit(store, 3)
    drive(clock, lambda: svc.event_serial == store.serial)
    assert svc.runners["h"].failed == [2]
    svc.stopService()
    hook2 = Recorder(lambda serial, attempt: broken["on"])
    svc2 = EventService(store, tmp_path, clock, {"h": hook2}, horizon=5.0)
    svc2.startService()
    assert svc2.status()["event-hooks"]["h"]["failed"] == [2]  # persisted
    assert svc2.retry(serials=[2]) == {"h": [2]}
    drive(clock, lambda: not svc2.runners["h"].retry_queue)
    assert hook2.attempts[2] == MAX_ATTEMPTS  # a retry that fails again: still failed
    assert svc2.runners["h"].failed == [2]
    broken["on"] = False
    assert svc2.retry() == {"h": [2]}
    drive(clock, lambda: not svc2.runners["h"].failed)
    assert hook2.seen == [2]
    clock.advance(SAVE_DELAY)
    state = json.loads((tmp_path / ".event-serial").read_text())
    assert state == {"serial": 3, "hooks": {"h": 3}}
    assert svc2.retry() == {}
    svc2.stopService()


def test_a_hook_failing_once_is_retried_and_sees_the_serial_again(
    store: SQLiteStore, tmp_path: Path
) -> None:
    clock = Clock()
    hook = Recorder(lambda serial, attempt: attempt == 1)
    svc = EventService(store, tmp_path, clock, {"h": hook})
    svc.startService()
    commit(store, 3)
    drive(clock, lambda: svc.event_serial == store.serial)
    assert hook.seen == [1, 2, 3]
    assert dict(hook.attempts) == {1: 2, 2: 2, 3: 2}
    assert svc.runners["h"].skipped == []
    svc.stopService()


def test_hooks_resume_after_restart_and_new_hooks_start_at_the_head(
    store: SQLiteStore, tmp_path: Path
) -> None:
    clock = Clock()
    first = Recorder()
    svc = EventService(store, tmp_path, clock, {"a": first})
    svc.startService()
    commit(store, 4)
    drive(clock, lambda: svc.event_serial == 4)
    svc.stopService()
    commit(store, 3)  # committed while events were not running
    again, newcomer = Recorder(), Recorder()
    svc2 = EventService(store, tmp_path, clock, {"a": again, "b": newcomer})
    svc2.startService()
    drive(clock, lambda: svc2.event_serial == 7)
    assert first.seen == [1, 2, 3, 4]
    assert again.seen == [5, 6, 7]  # resumed: nothing repeated, nothing missed
    assert newcomer.seen == []  # a new hook does not get the history
    commit(store, 1)
    drive(clock, lambda: svc2.event_serial == 8)
    assert again.seen == [5, 6, 7, 8] and newcomer.seen == [8]
    svc2.stopService()


def test_cursors_are_written_once_per_save_delay_not_per_serial(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """100 serials through two hooks: a handful of state-file writes, not 200 fsyncs."""
    clock = Clock()
    svc = EventService(store, tmp_path, clock, {"a": Recorder(), "b": Recorder()})
    svc.startService()
    commit(store, 100)
    drive(clock, lambda: svc.event_serial == store.serial)
    assert svc.saves == 1  # the start-up write only: nothing yet until SAVE_DELAY passes
    clock.advance(SAVE_DELAY)
    assert svc.saves == 2
    state = json.loads((tmp_path / ".event-serial").read_text())
    assert state == {"serial": 100, "hooks": {"a": 100, "b": 100}}
    commit(store, 1)
    clock.advance(0)
    svc.stopService()  # stopping writes what is pending at once
    assert json.loads((tmp_path / ".event-serial").read_text())["serial"] == 101


def test_event_loop_survives_errors_outside_the_hook(store: SQLiteStore, tmp_path: Path) -> None:
    """An injected failure writing the state file is logged and retried; the loop lives on."""
    clock = Clock()
    hook = Recorder()
    svc = EventService(store, tmp_path, clock, {"h": hook})
    svc.startService()
    blocker = tmp_path / ".event-serial.tmp"
    blocker.mkdir()  # open(tmp, "w") now fails with IsADirectoryError
    commit(store, 2)
    for _ in range(20):
        clock.advance(1)
    assert svc.saves == 1  # only the start-up save succeeded ...
    assert hook.seen == [1, 2]  # ... yet the hook saw each serial once, and the loop lives
    blocker.rmdir()
    commit(store, 1)
    drive(clock, lambda: svc.saves > 1 and svc.event_serial == store.serial)
    assert hook.seen == [1, 2, 3]
    assert json.loads((tmp_path / ".event-serial").read_text())["serial"] == 3
    svc.stopService()


# -- the webhook hook ----------------------------------------------------------------------------
class FakeResponse:
    def __init__(self, code: int) -> None:
        self.code = code

    def content(self) -> defer.Deferred[bytes]:
        return defer.succeed(b"")


class FakeHTTP:
    """Records POSTs; answers 500 the first time for URLs containing "flaky"."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def post(self, url: str, data: bytes, **kw: Any) -> defer.Deferred[FakeResponse]:
        self.posts.append((url, json.loads(data)))
        first = sum(1 for u, _ in self.posts if u == url) == 1
        return defer.succeed(FakeResponse(500 if "flaky" in url and first else 200))


class FakeServer:
    def __init__(self, store: SQLiteStore, tmp_path: Path) -> None:
        from devpid.web.app import Settings

        self.store = store
        self.settings = Settings(serverdir=tmp_path, host="127.0.0.1", port=3141)
        self.reactor = Clock()


def test_webhook_posts_new_files_once_per_url(store: SQLiteStore, tmp_path: Path) -> None:
    server = FakeServer(store, tmp_path)
    http = FakeHTTP()
    hook = WebhookHook(server, http=http)
    svc = EventService(store, tmp_path, server.reactor, {"webhooks": hook})
    svc.startService()
    with store.transaction() as tx:
        tx.set("index/u/i", {"type": "stage", "bases": [],
                             "webhooks": ["http://a.test/hook", "http://flaky.test/hook"]})
        tx.set("index/u/quiet", {"type": "stage", "bases": []})
    sha = "ab" * 32
    with store.transaction() as tx:
        tx.set("release/u/i/pkg/1.0", {"name": "pkg", "version": "1.0"})
        tx.set("file/u/i/pkg/pkg-1.0.tar.gz", {
            "filename": "pkg-1.0.tar.gz", "path": f"u/i/+f/{sha[:3]}/{sha[3:16]}/pkg-1.0.tar.gz",
            "sha256": sha, "size": 3, "version": "1.0"})
        tx.set("file/u/quiet/pkg/pkg-1.0.tar.gz", {"filename": "pkg-1.0.tar.gz", "sha256": sha})
    file_serial = store.serial
    drive(server.reactor, lambda: svc.event_serial == store.serial)
    assert [u for u, _ in http.posts] == [
        "http://a.test/hook", "http://flaky.test/hook", "http://flaky.test/hook"
    ]  # the retry did not post to the URL that had already succeeded
    body = http.posts[0][1]
    assert body == {
        "event": "release-files", "serial": file_serial, "stage": "u/i",
        "index_url": "http://127.0.0.1:3141/u/i/",
        "files": [{"project": "pkg", "filename": "pkg-1.0.tar.gz", "version": "1.0",
                   "sha256": sha, "size": 3,
                   "url": f"http://127.0.0.1:3141/u/i/+f/{sha[:3]}/{sha[3:16]}/pkg-1.0.tar.gz"}],
    }
    svc.stopService()


# -- end to end ------------------------------------------------------------------------------------
HOOK_MODULE = '''
import json, os

class FlakyHook:
    """Fails the first attempt on every third serial; logs successful serials."""

    def __init__(self, server):
        self.log = os.environ["DEVPID_TEST_HOOK_LOG"]
        self.failed = set()

    async def on_serial(self, serial, changes):
        if serial % 3 == 0 and serial not in self.failed:
            self.failed.add(serial)
            raise RuntimeError("injected failure")
        with open(self.log, "a") as f:
            f.write(json.dumps([serial, sorted(changes)]) + "\\n")
'''


def test_entry_point_hook_in_a_real_daemon(
    start_devpid: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    dist_info = site / "devpid_test_hooks-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / "devpid_test_hooks.py").write_text(HOOK_MODULE)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: devpid-test-hooks\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[devpid.hooks]\nflaky = devpid_test_hooks:FlakyHook\n"
    )
    hook_log = tmp_path / "hook.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DEVPID_TEST_HOOK_LOG", str(hook_log))
    server = start_devpid(name="hooked")
    for n in range(7):
        assert server.json("PUT", f"/e{n}", json={"password": "pw"}).status_code == 201
    head = serial_of(server)

    def logged() -> list[int]:
        if not hook_log.exists():
            return []
        return [json.loads(line)[0] for line in hook_log.read_text().splitlines()]

    wait_for(lambda: logged() and logged()[-1] == head, timeout=20, what="hook at head")
    assert logged() == list(range(1, head + 1))  # in order, each once, failures retried
    info = status(server)
    assert info["event-serial"] == head
    assert info["event-hooks"]["flaky"]["serial"] == head
    # Restart: nothing is delivered again.
    server.stop()
    server.start()
    assert server.json("PUT", "/after", json={"password": "pw"}).status_code == 201
    wait_for(lambda: logged()[-1] == head + 1, what="hook after restart")
    assert logged() == list(range(1, head + 2))


class Receiver:
    """A real HTTP webhook receiver in a thread."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.code = 204  # what it answers (a 5xx simulates a broken receiver)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                if outer.code < 300:
                    outer.bodies.append(body)
                self.send_response(outer.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.skipif(not UPLOAD_PY.exists(), reason="devpid/web/upload.py not written yet")
def test_webhook_receiver_gets_each_upload_exactly_once(
    start_devpid: Any, tmp_path: Path
) -> None:
    from tests.support.pkgbuild import make_wheel

    secret = tmp_path / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    receiver = Receiver()
    try:
        primary: Devpid = start_devpid("--secretfile", str(secret), name="primary")
        replica: Devpid = start_devpid("--primary-url", primary.url, "--secretfile", str(secret),
                                       init=False, name="replica")
        assert primary.json("PUT", "/w", json={"password": "pw"}).status_code == 201
        r = primary.json("PUT", "/w/dev", auth=("w", "pw"),
                         json={"bases": [], "webhooks": [receiver.url]})
        assert r.status_code == 200, r.text
        env = client_env(tmp_path)
        dist = tmp_path / "dist"
        dist.mkdir()
        wheels = [make_wheel(dist, "hooked-pkg", f"0.{n}") for n in range(3)]
        for n, wheel in enumerate(wheels):
            target = (replica if n == 1 else primary).url  # one upload through the replica
            run([tool("twine"), "upload", "--repository-url", target + "/w/dev/", "-u", "w",
                 "-p", "pw", str(wheel)], env)
        wait_serial(replica, serial_of(primary))
        wait_for(lambda: len(receiver.bodies) >= 3, what="three webhook posts")
        time.sleep(0.5)  # a duplicate (e.g. from the replica) would arrive by now
        names = [f["filename"] for body in receiver.bodies for f in body["files"]]
        assert sorted(names) == sorted(w.name for w in wheels)
        assert all(body["stage"] == "w/dev" for body in receiver.bodies)
        assert len({body["serial"] for body in receiver.bodies}) == 3
    finally:
        receiver.close()



@pytest.mark.skipif(not UPLOAD_PY.exists(), reason="devpid/web/upload.py not written yet")
def test_a_given_up_webhook_serial_is_listed_persisted_and_retried(
    start_devpid: Any, tmp_path: Path
) -> None:
    """Receiver broken past the horizon: the serial is listed in /+status and /+metrics,
    survives a restart, and ``devpid events retry`` (root only) delivers it."""
    from tests.conftest import ROOT_PASSWORD
    from tests.support.pkgbuild import make_wheel

    receiver = Receiver()
    receiver.code = 503
    try:
        server: Devpid = start_devpid("--event-retry-horizon", "1", name="hooks")
        assert server.json("PUT", "/w", json={"password": "pw"}).status_code == 201
        r = server.json("PUT", "/w/dev", auth=("w", "pw"),
                        json={"bases": [], "webhooks": [receiver.url]})
        assert r.status_code == 200, r.text
        env = client_env(tmp_path)
        wheel = make_wheel(tmp_path, "retried-pkg", "1.0")
        run([tool("twine"), "upload", "--repository-url", server.url + "/w/dev/", "-u", "w",
             "-p", "pw", str(wheel)], env)
        upload_serial = serial_of(server)

        def failed() -> list[int]:
            return list(status(server)["event-hooks"]["webhooks"]["failed"])

        wait_for(lambda: failed() == [upload_serial], timeout=20, what="the serial given up")
        metrics = requests.get(server.url + "/+metrics", timeout=5).text
        assert 'devpid_event_hook_failed_serials{hook="webhooks"} 1' in metrics
        server.stop()
        server.start()
        assert failed() == [upload_serial]  # persisted across the restart
        r = server.json("POST", "/+events/retry", auth=("w", "pw"), json={})
        assert r.status_code == 403 and "root" in r.json()["message"]
        r = server.json("POST", "/+events/retry", auth=("root", ROOT_PASSWORD),
                        json={"serials": "all"})
        assert r.status_code == 400 and "serials" in r.json()["message"]
        assert receiver.bodies == []
        receiver.code = 204
        proc = run([tool("devpid"), "events", "retry", "--url", server.url,
                    "--password", ROOT_PASSWORD], env)
        assert f"webhooks: retrying serials [{upload_serial}]" in proc.stdout
        wait_for(lambda: receiver.bodies, what="the retried post")
        assert [b["serial"] for b in receiver.bodies] == [upload_serial]
        assert receiver.bodies[0]["files"][0]["filename"] == wheel.name
        wait_for(lambda: failed() == [], what="the serial no longer failed")
        proc = run([tool("devpid"), "events", "list", "--url", server.url], env)
        assert "webhooks: serial" in proc.stdout and "failed none" in proc.stdout
    finally:
        receiver.close()
