"""Client-side helpers for tests of a mirror under upstream faults: what reaches the wire."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import Devpid
from tests.support.fakepypi import FakePyPI

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def page(server: Devpid, stage: str, project: str) -> requests.Response:
    return requests.get(f"{server.url}/{stage}/+simple/{project}/",
                        headers={"Accept": JSON_ACCEPT}, timeout=15)


def status(server: Devpid, stage: str) -> dict[str, Any]:
    result: dict[str, Any] = server.json("GET", "/+status").json()["result"]["mirrors"][stage]
    return result


def metric(server: Devpid, name: str, stage: str) -> float:
    text = requests.get(server.url + "/+metrics", timeout=5).text
    m = re.search(rf'^devpid_{name}{{stage="{re.escape(stage)}"}} (\S+)$', text, re.M)
    assert m, f"{name} missing in /+metrics"
    return float(m.group(1))


def wait_for(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def file_url(server: Devpid, stage: str, project: str) -> str:
    entry = page(server, stage, project).json()["files"][0]
    return f"{server.url}/{stage}/+simple/{project}/{entry['url']}"


def read_all(url: str, seconds: float = 25.0) -> tuple[int | None, int, str]:
    """(status, bytes read, outcome) of one streamed GET: outcome is "complete", the
    exception's class name, or "hung" if it still had not ended after ``seconds``."""
    code: int | None = None
    got = 0
    deadline = time.monotonic() + seconds
    try:
        with requests.get(url, stream=True, timeout=(5, seconds)) as r:
            code = r.status_code
            for chunk in r.iter_content(64 * 1024):
                got += len(chunk)
                if time.monotonic() > deadline:
                    return code, got, "hung"
    except requests.exceptions.RequestException as e:
        # iter_content reports a read timeout in the body as a ConnectionError
        if isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e):
            return code, got, "hung"
        return code, got, type(e).__name__
    return code, got, "complete"


def concurrent_reads(url: str, n: int, stagger: float = 0.3) -> list[tuple[int | None, int, str]]:
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        results[i] = read_all(url)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(stagger)  # later readers join the running download
    for t in threads:
        t.join(60)
    return results


def temp_blobs(server: Devpid) -> list[Path]:
    """Temp blob files left (on PostgreSQL in the node's own directory under ``tmp``)."""
    return [p for p in (server.serverdir / "+blobs" / "tmp").rglob("*") if not p.is_dir()]


def assert_recovers(server: Devpid, up: FakePyPI, url: str, path: Path) -> None:
    """With the fault gone, the next request downloads afresh and gets the right bytes."""
    before = up.count(f"/files/{path.name}")
    up.clear_faults()
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(
        path.read_bytes()).digest()
    assert up.count(f"/files/{path.name}") == before + 1


