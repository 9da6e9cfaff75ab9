"""A mirror serves only bytes it fetched from its own upstream (issue 19, Medium 8).

Blobs are content-addressed and shared by every index, so an upstream page that claims the
sha256 of somebody's private upload must neither get those bytes served through the mirror
nor keep them alive through gc after their owner deleted the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from tests.conftest import client_env, run, tool
from tests.support.fakepypi import JSON_TYPE, FakePyPI
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import make_index, make_user, upload_ok


def test_a_page_claiming_another_indexs_sha256_gets_nothing_of_it(
    start_devpid: Any, tmp_path: Path
) -> None:
    fake = FakePyPI(tmp_path / "upstream")
    fake.start()
    try:
        server = start_devpid(upstream_url=fake.url)
        auth = make_user(server, "victim")
        stage = make_index(server, auth, "private")
        secret = make_wheel(tmp_path / "w", "secret-pkg", "1.0", summary="private bits")
        upload_ok(server, auth, stage, secret, "secret-pkg", "1.0")
        secret_bytes = secret.read_bytes()
        secret_sha = hashlib.sha256(secret_bytes).hexdigest()
        page = requests.get(f"{server.url}/{stage}/+simple/secret-pkg/",
                            headers={"Accept": JSON_TYPE}, timeout=10).json()
        secret_meta_sha = page["files"][0]["core-metadata"]["sha256"]
        secret_meta = requests.get(f"{server.url}/{stage}/+f/{secret_sha[:3]}/"
                                   f"{secret_sha[3:16]}/{secret.name}.metadata", timeout=10)
        assert secret_meta.ok

        # The upstream of root/pypi publishes another wheel under the private file's hashes.
        lure = fake.publish("lure-pkg", "1.0")
        fake.claim(lure.name, secret_sha, secret_meta_sha)
        mirror_page = requests.get(f"{server.url}/root/pypi/+simple/lure-pkg/",
                                   headers={"Accept": JSON_TYPE}, timeout=10).json()
        entry = mirror_page["files"][0]
        assert entry["hashes"]["sha256"] == secret_sha
        url = requests.compat.urljoin(f"{server.url}/root/pypi/+simple/lure-pkg/",
                                      entry["url"].split("#")[0])
        try:
            got = requests.get(url, timeout=10)
            body, code = got.content, got.status_code
        except requests.RequestException:  # the mismatching download is aborted
            body, code = b"", 0
        assert body != secret_bytes and code != 200, code
        meta = requests.get(url + ".metadata", timeout=10)
        assert meta.content != secret_meta.content and meta.status_code != 200

        # The owner deletes the file: gc frees its bytes although the page still claims them.
        r = server.json("DELETE", f"/{stage}/secret-pkg/1.0", auth=auth)
        assert r.status_code == 200, r.text
        env = client_env(tmp_path)
        out = run([tool("devpid"), "gc", "--serverdir", str(server.serverdir),
                   "--grace-seconds", "0"], env)
        assert "removed" in out.stdout
        blobs = server.serverdir / "+blobs"
        assert not (blobs / secret_sha[:2] / secret_sha[2:4] / secret_sha).exists()
        assert not (blobs / secret_meta_sha[:2] / secret_meta_sha[2:4] /
                    secret_meta_sha).exists()
    finally:
        fake.close()


def test_a_mirror_still_serves_and_keeps_what_it_fetched(
    start_devpid: Any, tmp_path: Path
) -> None:
    """The provenance check does not cost the mirror its own cached files."""
    fake = FakePyPI(tmp_path / "upstream")
    fake.start()
    try:
        server = start_devpid(upstream_url=fake.url)
        wheel = fake.publish("cached-pkg", "1.0")
        page = requests.get(f"{server.url}/root/pypi/+simple/cached-pkg/",
                            headers={"Accept": JSON_TYPE}, timeout=10).json()
        url = requests.compat.urljoin(f"{server.url}/root/pypi/+simple/cached-pkg/",
                                      page["files"][0]["url"].split("#")[0])
        assert requests.get(url, timeout=10).content == wheel.read_bytes()
        assert requests.get(url + ".metadata", timeout=10).ok
        run([tool("devpid"), "gc", "--serverdir", str(server.serverdir),
             "--grace-seconds", "0"], client_env(tmp_path))
        fake.mode = "error"
        assert requests.get(url, timeout=10).content == wheel.read_bytes()
    finally:
        fake.close()
