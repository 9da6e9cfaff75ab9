"""Waiting on a daemon's state in tests: bounded polls of a predicate and of /+status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from tests.conftest import Devpid


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` with short sleeps until it is truthy (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}")


def status(server: Devpid) -> dict[str, Any]:
    r = requests.get(server.url + "/+status", headers={"Accept": "application/json"}, timeout=5)
    r.raise_for_status()
    result: dict[str, Any] = r.json()["result"]
    return result


def serial_of(server: Devpid) -> int:
    return int(status(server)["serial"])


def wait_serial(server: Devpid, serial: int, timeout: float = 15.0) -> None:
    """Until ``server`` has applied ``serial`` (a replica, another node, a worker's write)."""
    wait_for(lambda: serial_of(server) >= serial, timeout, f"{server.url} at serial {serial}")
