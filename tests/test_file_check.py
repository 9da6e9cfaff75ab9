"""devpid's answer to nginx's file check (``X-Devpid-Check``, see nginx/devpid-nginx.conf.in):
an empty 200 that names the blob nginx may send, or names nothing (devpid answers then)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.conftest import Devpid
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import make_index, sha256_file, simple_json, upload_ok

CHECK = {"X-Devpid-Check": "1"}


def _check(url: str, **headers: str) -> requests.Response:
    r = requests.get(url, headers={**CHECK, **headers}, timeout=30)
    assert r.status_code == 200 and r.content == b"", (r.status_code, r.text)
    return r


def test_file_check_names_the_blob_or_nothing(devpid_server: Devpid, alice: tuple[str, str],
                                              tmp_path: Path) -> None:
    stage = make_index(devpid_server, alice, "checked")
    wheel = make_wheel(tmp_path, "checked-pkg", "1.0")
    upload_ok(devpid_server, alice, stage, wheel, "checked-pkg", "1.0")
    page_url = f"{devpid_server.url}/{stage}/+simple/checked-pkg/"
    entry = simple_json(devpid_server, stage, "checked-pkg")["files"][0]
    url = urljoin(page_url, entry["url"])
    plain = requests.get(url, timeout=30)
    assert plain.content == wheel.read_bytes()

    sha = sha256_file(wheel)
    r = _check(url)
    assert r.headers["X-Devpid-Blob"] == f"/{sha[0:2]}/{sha[2:4]}/{sha}"
    assert (devpid_server.serverdir / "+blobs" / sha[0:2] / sha[2:4] / sha).is_file()
    assert r.headers["X-Devpid-Type"] == "application/octet-stream"
    assert r.headers["ETag"] == plain.headers["ETag"]
    assert "X-Accel-Expires" not in r.headers

    meta = _check(url + ".metadata")
    meta_sha = meta.headers["X-Devpid-Blob"].rsplit("/", 1)[1]
    assert meta_sha != sha and len(meta_sha) == 64

    # Whatever devpid must answer itself: no blob, and nginx must not reuse the answer.
    for no_blob in (
        _check(url, Accept="application/json"),
        _check(url + "?x=1"),
        _check(urljoin(url, "other-1.0-py3-none-any.whl")),
        _check(f"{devpid_server.url}/nobody/nothing/+f/abc/def/x-1.0.tar.gz"),
        _check(f"{devpid_server.url}/{stage}/+f/%2E%2E/%2E%2E/etc/passwd"),  # not normalised
    ):
        assert "X-Devpid-Blob" not in no_blob.headers
        assert no_blob.headers["X-Accel-Expires"] == "0"

    # Deleted: nothing to send any more; the full route says why.
    r = requests.delete(f"{devpid_server.url}/{stage}/checked-pkg/1.0", auth=alice,
                        headers={"Accept": "application/json"}, timeout=30)
    assert r.ok, r.text
    assert "X-Devpid-Blob" not in _check(url).headers
    gone = requests.get(url, timeout=30)
    assert gone.status_code in (404, 410) and gone.json()["message"]


def test_small_blob_cache_stays_within_its_bound() -> None:
    from devpid.web.files import SmallBlobCache

    cache = SmallBlobCache(max_bytes=1000)
    for i in range(50):
        cache.put(f"{i:064x}", bytes(300), b"date")
        assert cache.size <= 1000
        assert cache.size == sum(len(data) for data, _ in cache.entries.values())
    assert cache.get(f"{49:064x}") == (bytes(300), b"date")  # the newest stay
    assert cache.get(f"{0:064x}") is None  # the oldest went
    cache.put("f" * 64, bytes(2000), b"date")  # bigger than the whole cache: not kept
    assert cache.get("f" * 64) is None
