"""A huge upstream page (50,000 files, ~20 MB) never stalls the server, and has a bound.

The real daemon mirrors our fake upstream, which generates the huge page. While the daemon
fetches, parses, merges, stores and renders it, a cached page of another project must keep
being answered (a liveness bound, generous on a shared machine: not a benchmark). A page
above ``--mirror-max-page-size`` is refused with a clear 502 instead of being read.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.conftest import Devpid
from tests.support.fakepypi import FakePyPI
from tests.support.polling import wait_for

pytestmark = pytest.mark.slow
JSON = "application/vnd.pypi.simple.v1+json"
# Seconds. Before, the reactor itself parsed, merged, encoded and rendered the page: every
# other request waited 7 s and more. What is left on it is the SQLite commit of the page
# (~0.5 s for 20 MB); the rest of the bound is slack for a loaded, shared machine.
LIVENESS = 3.0


def _big_request(server: Devpid, project: str, out: dict[str, Any], accept: str) -> None:
    try:
        out["response"] = requests.get(f"{server.url}/root/pypi/+simple/{project}/",
                                       headers={"Accept": accept}, timeout=120)
    except Exception as e:  # reported by the test
        out["error"] = e
    finally:
        out["done"] = time.monotonic()


def _latencies_while(server: Devpid, small: str, big: str, accept: str) -> tuple[list[float],
                                                                                   Any]:
    """Fetch ``big`` in a thread; meanwhile time requests for the cached page ``small``."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=_big_request, args=(server, big, out, accept))
    thread.start()
    latencies: list[float] = []
    while "done" not in out:
        started = time.monotonic()
        r = requests.get(f"{server.url}/root/pypi/+simple/{small}/",
                         headers={"Accept": JSON}, timeout=30)
        assert r.status_code == 200, r.text
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    thread.join()
    assert "error" not in out, out
    return latencies, out["response"]


def test_a_huge_page_does_not_stall_cached_pages_and_is_bounded(
    start_devpid: Any, upstream: FakePyPI, unique: str
) -> None:
    small, big, too_big = f"small-{unique}", f"huge-{unique}", f"toobig-{unique}"
    upstream.publish(small, "1.0")
    upstream.add_synthetic(big, 50_000)  # ~20 MB of JSON
    upstream.add_synthetic(too_big, 80_000)  # ~32 MB: above the bound below
    upstream._render_synthetic(big, "json")  # generated up front: time the server only
    upstream._render_synthetic(too_big, "json")
    server: Devpid = start_devpid("--mirror-max-page-size", "24M", "--request-timeout", "60",
                                  upstream_url=upstream.url)
    r = requests.get(f"{server.url}/root/pypi/+simple/{small}/", headers={"Accept": JSON})
    assert r.status_code == 200 and len(r.json()["files"]) == 1

    latencies, response = _latencies_while(server, small, big, JSON)
    assert response.status_code == 200, response.text[:500]
    files = response.json()["files"]
    assert len(files) == 50_000
    assert files[0]["filename"].startswith(big.replace("-", "_") + "-0.0-")
    print(f"\ncached-page requests during the huge fetch: {len(latencies)}, "
          f"slowest {max(latencies):.2f} s")
    assert len(latencies) >= 3, latencies  # the huge page really took a while
    assert max(latencies) < LIVENESS, latencies

    # The HTML rendering of the stored page (a cache miss) does not stall either.
    latencies, response = _latencies_while(server, small, big, "text/html")
    assert response.status_code == 200 and response.text.count("<a ") == 50_000
    assert max(latencies) < LIVENESS, latencies

    # A changed upstream page is merged and stored again, off the reactor as well.
    upstream.add_synthetic(big, 50_000)
    upstream._render_synthetic(big, "json")
    r = requests.post(f"{server.url}/root/pypi/+simple/{big}/refresh", allow_redirects=False,
                      timeout=120)
    assert r.status_code == 302

    def first_hash() -> str:
        r = requests.get(f"{server.url}/root/pypi/+simple/{big}/", headers={"Accept": JSON},
                         timeout=120)
        return str(r.json()["files"][0]["hashes"]["sha256"])

    # The refresh runs in the background (the stale page is served meanwhile).
    wait_for(lambda: first_hash() != files[0]["hashes"]["sha256"], timeout=60,
             what="the changed page")

    # A file of the big page is found in it (the fake upstream has no bytes for it).
    page = requests.get(f"{server.url}/root/pypi/+simple/{big}/", headers={"Accept": JSON},
                        timeout=120).json()
    r = requests.get(urljoin(f"{server.url}/root/pypi/+simple/{big}/",
                             page["files"][-1]["url"]), timeout=60)
    assert r.status_code == 404 and "no longer has" in r.json()["message"], r.text

    # Over the bound: a clear error, not a page eating memory.
    r = requests.get(f"{server.url}/root/pypi/+simple/{too_big}/", headers={"Accept": JSON},
                     timeout=60)
    assert r.status_code == 502, r.text[:500]
    message = r.json()["message"]
    assert "larger than" in message and str(24 * 1024 * 1024) in message, message
    # ... which is not an upstream failure: other projects are fetched at once (no backoff)
    other = f"other-{unique}"
    upstream.publish(other, "1.0")
    r = requests.get(f"{server.url}/root/pypi/+simple/{other}/", headers={"Accept": JSON},
                     timeout=60)
    assert r.status_code == 200, r.text

