"""Tests for the test-support helpers (pkgbuild, FakePyPI).

Other tests trust these helpers to be a faithful upstream, so they get their
own quick checks: real installs, real sockets, real faults.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pkgbuild
from tests.support.fakepypi import JSON_TYPE, FakePyPI, negotiate

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "hello_world_pkg-1.0-py3-none-any.whl"


# -- helpers ---------------------------------------------------------------------


def fetch(
    fake: FakePyPI, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def hermetic_pip_env() -> dict[str, str]:
    """Environment for pip that ignores machine-wide pip config (extra indexes, find-links,
    constraints), so an install can only succeed from the locations the test names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakePyPI]:
    with FakePyPI(tmp_path / "pypi") as server:
        server.publish("Hello_World.pkg", "1.0", requires_python=">=3.8", summary="hi")
        yield server


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bare venv per session; pip from the running interpreter installs into it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / "bin" / "python"


# -- pkgbuild -------------------------------------------------------------------


def test_wheel_installs_with_pip(tmp_path: Path, venv_python: Path) -> None:
    dist = tmp_path / "dist"
    pkgbuild.make_wheel(dist, "Hello_World.pkg", "1.0", requires_dist=["dep-one>=1"])
    pkgbuild.make_wheel(dist, "dep.one", "1.2", requires_python=">=3.8")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q",
         "--disable-pip-version-check", "--no-index", "--find-links", str(dist),
         "hello-world-pkg"],
        check=True, env=hermetic_pip_env(),
    )  # fmt: skip
    out = subprocess.run(
        [str(venv_python), "-c", "import hello_world_pkg as m, dep_one; print(m.__version__)"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip() == "1.0"


def test_wheel_record_metadata_and_payload(tmp_path: Path) -> None:
    path = pkgbuild.make_wheel(
        tmp_path, "Hello_World.pkg", "2.0", requires_python=">=3.9",
        requires_dist=["a", "b>1"], summary="s", extra_bytes=100_000,
    )  # fmt: skip
    assert path.name == "hello_world_pkg-2.0-py3-none-any.whl"
    with zipfile.ZipFile(path) as zf:
        record = zf.read("hello_world_pkg-2.0.dist-info/RECORD").decode()
        for line in record.splitlines():
            name, hash_, size = line.rsplit(",", 2)
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert hash_ == "sha256=" + digest.decode() and int(size) == len(data)
        meta = zf.read("hello_world_pkg-2.0.dist-info/METADATA")
        payload = zf.getinfo("hello_world_pkg/_payload.bin")
    assert meta == pkgbuild.metadata_bytes("Hello_World.pkg", "2.0", ">=3.9", ["a", "b>1"], "s")
    assert b"Requires-Dist: b>1\n" in meta
    assert payload.compress_type == zipfile.ZIP_STORED and payload.file_size == 100_000
    assert path.stat().st_size > 100_000
    # reproducible: same arguments, same bytes
    again = pkgbuild.make_wheel(
        tmp_path / "again", "Hello_World.pkg", "2.0", requires_python=">=3.9",
        requires_dist=["a", "b>1"], summary="s", extra_bytes=100_000,
    )  # fmt: skip
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_sdist_layout(tmp_path: Path, fmt: str) -> None:
    path = pkgbuild.make_sdist(tmp_path, "Hello_World.pkg", "1.0", fmt=fmt)  # type: ignore[arg-type]
    assert path.name == f"Hello_World.pkg-1.0.{fmt}"
    top = "Hello_World.pkg-1.0"
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            pkg_info = zf.read(f"{top}/PKG-INFO")
    else:
        with tarfile.open(path) as tf:
            names = set(tf.getnames())
            member = tf.extractfile(f"{top}/PKG-INFO")
            assert member is not None
            pkg_info = member.read()
    assert names == {
        f"{top}/PKG-INFO",
        f"{top}/pyproject.toml",
        f"{top}/hello_world_pkg/__init__.py",
    }
    assert pkg_info == pkgbuild.metadata_bytes("Hello_World.pkg", "1.0", None, (), "")


def test_import_name_is_safe() -> None:
    assert pkgbuild.import_name("Hello_World.pkg") == "hello_world_pkg"
    assert pkgbuild.import_name("3d-thing") == "_3d_thing"
    assert pkgbuild.dist_name("Foo.Bar--baz") == "foo_bar_baz"


# -- negotiation / pages --------------------------------------------------------


def test_negotiate_unit() -> None:
    assert negotiate(None)[0] == "html"
    assert negotiate("*/*")[0] == "html"
    assert negotiate(JSON_TYPE)[0] == "json"
    assert negotiate(f"{JSON_TYPE}, text/html;q=0.01")[0] == "json"
    assert negotiate(f"text/html, {JSON_TYPE};q=0.5")[0] == "html"
    assert negotiate(f"{JSON_TYPE};q=0, text/html")[0] == "html"
    assert negotiate("application/json")[0] == "html"


def test_json_and_html_project_page(fake: FakePyPI) -> None:
    fake.yank(WHEEL, "broken")
    status, headers, body = fetch(fake, "/simple/hello-world-pkg/", {"Accept": JSON_TYPE})
    assert status == 200 and headers["content-type"] == JSON_TYPE
    doc = json.loads(body)
    assert doc["meta"] == {"api-version": "1.1"} and doc["name"] == "hello-world-pkg"
    (entry,) = doc["files"]
    assert entry["filename"] == WHEEL and entry["yanked"] == "broken"
    assert entry["requires-python"] == ">=3.8" and entry["upload-time"].endswith("Z")
    assert entry["hashes"]["sha256"] == fake.sha256(WHEEL)
    assert entry["size"] == (fake.directory / WHEEL).stat().st_size

    status, headers, body = fetch(fake, "/simple/hello-world-pkg/", {"Accept": "text/html"})
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<meta name="pypi:repository-version" content="1.1">' in page
    assert f'href="../../files/{WHEEL}#sha256={fake.sha256(WHEEL)}"' in page
    assert 'data-requires-python="&gt;=3.8"' in page and 'data-yanked="broken"' in page
    assert f'data-core-metadata="sha256={entry["core-metadata"]["sha256"]}"' in page
    assert int(headers["x-pypi-last-serial"]) == fake.serial

    # PEP 658 metadata file matches both the hash and what pkgbuild generated
    status, _, meta = fetch(fake, f"/files/{WHEEL}.metadata")
    assert status == 200
    assert hashlib.sha256(meta).hexdigest() == entry["core-metadata"]["sha256"]
    assert meta == pkgbuild.metadata_bytes("Hello_World.pkg", "1.0", ">=3.8", (), "hi")


def test_index_redirects_404_and_html_only(fake: FakePyPI) -> None:
    status, headers, _ = fetch(fake, "/simple/Hello_World.pkg/")
    assert status == 301 and headers["location"] == fake.url + "hello-world-pkg/"
    assert fetch(fake, "/simple/nope/")[0] == 404
    status, _, body = fetch(fake, "/simple/", {"Accept": JSON_TYPE})
    assert json.loads(body)["projects"] == [{"name": "Hello_World.pkg"}]
    assert b'<a href="hello-world-pkg/">Hello_World.pkg</a>' in fetch(fake, "/simple/")[2]
    fake.html_only = True
    _, headers, body = fetch(fake, "/simple/hello-world-pkg/", {"Accept": JSON_TYPE})
    assert headers["content-type"].startswith("text/html") and body.startswith(b"<!DOCTYPE")


def test_if_none_match_gives_304_and_serial_bumps(fake: FakePyPI) -> None:
    for path in ("/simple/", "/simple/hello-world-pkg/", f"/files/{WHEEL}"):
        _, headers, _ = fetch(fake, path)
        status, headers304, body = fetch(fake, path, {"If-None-Match": headers["etag"]})
        assert (status, body) == (304, b"") and headers304["etag"] == headers["etag"]
    _, headers, _ = fetch(fake, "/simple/hello-world-pkg/")
    serial = fake.serial
    fake.publish("hello-world-pkg", "1.1", kind="sdist")
    assert fake.serial == serial + 1
    status, headers2, _ = fetch(
        fake, "/simple/hello-world-pkg/", {"If-None-Match": headers["etag"]}
    )
    assert status == 200 and int(headers2["x-pypi-last-serial"]) == serial + 1
    fake.remove(WHEEL)
    fake.remove("hello-world-pkg-1.1.tar.gz")
    assert fetch(fake, "/simple/hello-world-pkg/")[0] == 404


def test_file_headers_and_request_log(fake: FakePyPI) -> None:
    fake.reset_log()
    status, headers, body = fetch(fake, f"/files/{WHEEL}", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == (fake.directory / WHEEL).stat().st_size
    assert "last-modified" in headers and headers["etag"] == f'"{fake.sha256(WHEEL)}"'
    fetch(fake, f"/files/{WHEEL}", {"X-Test": "1"})
    assert fake.count("/files/") == 2 and fake.count("/simple/") == 0
    method, path, hdrs = fake.requests[-1]
    assert (method, path, hdrs["X-Test"]) == ("GET", f"/files/{WHEEL}", "1")


def test_extra_project_names(tmp_path: Path) -> None:
    with FakePyPI(tmp_path, extra_project_names=1000) as server:
        body = fetch(server, "/simple/", {"Accept": JSON_TYPE})[2]
        projects = json.loads(body)["projects"]
        assert len(projects) == 1000 and projects[0] == {"name": "proj-000001"}
        assert fetch(server, "/simple/")[2].count(b"<a ") == 1000


# -- lifecycle and faults -------------------------------------------------------


def test_stop_refuses_and_restart_on_same_port(fake: FakePyPI) -> None:
    # keep-alive connection opened before stop() must not keep being served
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("GET", "/simple/")
    conn.getresponse().read()
    port = fake.port
    fake.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", "/simple/")
        conn.getresponse().read()
    conn.close()
    fake.start()
    assert fake.port == port
    assert fetch(fake, "/simple/hello-world-pkg/")[0] == 200


def test_corrupt_and_truncate(fake: FakePyPI) -> None:
    good = (fake.directory / WHEEL).read_bytes()
    fake.corrupt(WHEEL)
    status, _, body = fetch(fake, f"/files/{WHEEL}")
    assert status == 200 and len(body) == len(good) and body != good
    fake.clear_faults()
    fake.truncate(WHEEL)
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("GET", f"/files/{WHEEL}")
    resp = conn.getresponse()
    assert resp.getheader("Content-Length") == str(len(good))
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert len(info.value.partial) == len(good) // 2
    conn.close()
    fake.clear_faults()
    assert fetch(fake, f"/files/{WHEEL}")[2] == good


def test_error_and_slow_modes(fake: FakePyPI) -> None:
    fake.mode = "error"
    assert fetch(fake, "/simple/")[0] == 500
    fake.publish("big", "1.0", extra_bytes=8000)
    size = (fake.directory / "big-1.0-py3-none-any.whl").stat().st_size
    fake.mode = "slow"
    fake.slow_rate = 20_000
    start = time.monotonic()
    status, _, body = fetch(fake, "/files/big-1.0-py3-none-any.whl")
    elapsed = time.monotonic() - start
    assert status == 200 and len(body) == size
    assert elapsed >= size / 20_000 * 0.7
    with pytest.raises(ValueError):
        fake.mode = "bogus"  # type: ignore[assignment]


def test_hang_does_not_block_stop(fake: FakePyPI) -> None:
    fake.mode = "hang"
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            outcome.append(fetch(fake, "/simple/")[0])
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while fake.count("/simple/") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert outcome == []  # still hanging
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2
    thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], (OSError, http.client.HTTPException))


def test_hang_then_recover(fake: FakePyPI) -> None:
    fake.mode = "hang"
    timer = threading.Timer(0.3, fake.clear_faults)
    timer.start()
    assert fetch(fake, "/simple/")[0] == 200
    timer.join()


def test_standalone_cli(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fakepypi", "--port", "0", "--dir", str(tmp_path),
         "--publish", "foo==1.0", "--publish-sdist", "foo==1.1"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/simple/")
        port = int(url.split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/simple/foo/", headers={"Accept": JSON_TYPE})
        files = json.loads(conn.getresponse().read())["files"]
        conn.close()
        assert {f["filename"] for f in files} == {"foo-1.0-py3-none-any.whl", "foo-1.1.tar.gz"}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
