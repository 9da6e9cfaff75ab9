"""SIGTERM while requests are in flight: they finish, then the store closes (devpid/node.py).

A mirror page whose upstream answers late is the slow request: the daemon must stop accepting,
wait for it (bounded), let the mirror write the page it fetched, and only then close the store.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import Devpid
from tests.support.fakepypi import FakePyPI

ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}
PROJECTS = [f"slowpage{i}" for i in range(6)]
DRAINING = "request(s) in progress"
BAD_LOG = ("Traceback", "closed database", "Cannot operate on a closed", "Unhandled")


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    fake = FakePyPI(tmp_path_factory.mktemp("shutdown-upstream"))
    for name in PROJECTS:
        fake.publish(name, "1.0")
    fake.start()
    yield fake
    fake.close()


def _fetch(server: Devpid, project: str, results: dict[str, Any]) -> None:
    try:
        r = requests.get(f"{server.url}/root/pypi/+simple/{project}/", headers=ACCEPT,
                         timeout=30)
        results[project] = (r.status_code, r.json() if r.ok else r.text)
    except requests.RequestException as e:
        results[project] = (None, repr(e))


def _sigterm_during_slow_pages(server: Devpid, upstream: FakePyPI) -> dict[str, Any]:
    """Hold mirror pages open upstream, SIGTERM the daemon, then let upstream answer."""
    assert server.proc is not None
    results: dict[str, Any] = {}
    before = {p: upstream.count(f"/simple/{p}/") for p in PROJECTS}
    upstream.mode = "hang"
    try:
        threads = [threading.Thread(target=_fetch, args=(server, p, results)) for p in PROJECTS]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while any(upstream.count(f"/simple/{p}/") == n for p, n in before.items()):
            assert time.monotonic() < deadline, "the pages never reached upstream"
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        # The daemon says it waits for requests; old code instead drops them (threads end).
        while DRAINING not in server.log() and any(t.is_alive() for t in threads):
            assert time.monotonic() < deadline + 10, "neither drained nor dropped"
            time.sleep(0.02)
    finally:
        upstream.mode = "ok"
    for t in threads:
        t.join(30)
    server.proc.wait(30)  # twistd ends by re-raising SIGTERM: no exit code to check
    return results


def _assert_clean(server: Devpid, results: dict[str, Any]) -> None:
    log = server.log()
    for project in PROJECTS:
        code, body = results[project]
        assert code == 200, f"{project}: {code} {body}\n{log}"
        assert [f["filename"] for f in body["files"]] == [f"{project}-1.0-py3-none-any.whl"]
    for bad in BAD_LOG:
        assert bad not in log, log


def test_sigterm_lets_slow_requests_finish(start_devpid: Any, slow_upstream: FakePyPI) -> None:
    server: Devpid = start_devpid("--request-timeout", "20", upstream_url=slow_upstream.url)
    results = _sigterm_during_slow_pages(server, slow_upstream)
    _assert_clean(server, results)
    # The pages fetched while stopping were committed before the store closed.
    again = start_devpid("--offline-mode")
    r = requests.get(f"{again.url}/root/pypi/+simple/{PROJECTS[0]}/", headers=ACCEPT)
    assert r.status_code == 200, r.text


def test_sigterm_with_workers_lets_slow_requests_finish(
    start_devpid: Any, slow_upstream: FakePyPI
) -> None:
    server: Devpid = start_devpid("--workers", "2", "--request-timeout", "20",
                                  upstream_url=slow_upstream.url)
    deadline = time.monotonic() + 15  # until the worker accepts too (any process may)
    while server.json("GET", "/+status").json()["result"].get("workers", {}).get("this") != 1:
        assert time.monotonic() < deadline, "the worker never answered"
        time.sleep(0.02)
    results = _sigterm_during_slow_pages(server, slow_upstream)
    _assert_clean(server, results)


def test_ordered_services_stop_one_after_another() -> None:
    """Pure logic: the next (earlier) child stops only once the later one's stop finished,
    and a failing stop does not keep the store from closing."""
    from twisted.application import service
    from twisted.internet.defer import Deferred

    from devpid.node import OrderedServices

    events: list[str] = []
    pending: Deferred[None] = Deferred()

    class Child(service.Service):
        def __init__(self, name: str, result: Any = None) -> None:
            self.setName(name)
            self.result = result

        def stopService(self) -> Any:
            super().stopService()
            events.append(self.name)
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

    root = OrderedServices()
    for child in (Child("store"), Child("loops", RuntimeError("boom")),
                  Child("drain", pending), Child("site")):
        child.setServiceParent(root)
    root.startService()
    done = root.stopService()
    assert events == ["site", "drain"]  # the store waits for the drain
    pending.callback(None)
    assert events == ["site", "drain", "loops", "store"]
    assert done.called
