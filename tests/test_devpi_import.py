"""Migrating from a real devpi-server 6.x: ``devpi-export`` output imported by ``devpid import``.

A separate virtualenv with devpi-server is built once per session (the slow part; set
DEVPID_TEST_DEVPI_VENV to an existing one to reuse it). The devpi server is filled with the
devpi client, exported, stopped, and the export is imported into devpid.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid.store import keys, open_store
from tests.conftest import client_env, import_store_args, run, tool
from tests.support.pkgbuild import make_sdist, make_wheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def devpi_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a virtualenv holding devpi-server 6.x and devpi-client."""
    reuse = os.environ.get("DEVPID_TEST_DEVPI_VENV")
    if reuse and (Path(reuse) / "bin" / "devpi-export").exists():
        return Path(reuse) / "bin"
    venv = tmp_path_factory.mktemp("devpi-venv")
    env = dict(os.environ)  # the machine's own pip configuration: this installs packages
    try:
        run([sys.executable, "-m", "venv", str(venv)], env, timeout=120)
        run([str(venv / "bin" / "pip"), "install", "-q", "devpi-server>=6,<7",
             "devpi-client>=7,<8"], env, timeout=600)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot install devpi-server 6.x into a virtualenv: {e}")
    return venv / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevpiExport:
    path: Path
    files: dict[str, Path]  # filename -> the file as built
    doc_zip: Path


@pytest.fixture(scope="session")
def devpi_export(devpi_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> DevpiExport:
    """A devpi-server export: alice with indexes base and dev (dev inherits base), wheels, an
    sdist with a non-normalised name and a doc zip."""
    work = tmp_path_factory.mktemp("devpi-source")
    env = client_env(work)
    serverdir = work / "devpi-server"
    run([str(devpi_bin / "devpi-init"), "--serverdir", str(serverdir), "--root-passwd", ""],
        env)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "devpi-server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(devpi_bin / "devpi-server"), "--serverdir", str(serverdir), "--host", "127.0.0.1",
         "--port", str(port), "--offline-mode"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(url + "/+api", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "devpi-server did not start:\n" + (work / "devpi-server.log").read_text())
            time.sleep(0.2)
        dist = work / "dist"
        built = {
            "base": [make_wheel(dist, "hello-pkg", "1.0", requires_python=">=3.8",
                                summary="hello")],
            "dev": [make_wheel(dist, "hello-pkg", "1.1"),
                    make_sdist(dist, "Other_Pkg", "2.0")],
        }
        doc_zip = dist / "hello-pkg-1.1.doc.zip"
        with zipfile.ZipFile(doc_zip, "w") as zf:
            zf.writestr("index.html", "<h1>hello docs</h1>")
        devpi = str(devpi_bin / "devpi")
        run([devpi, "use", url], env)
        run([devpi, "user", "-c", "alice", "password=alice-pw", "email=alice@example.org"], env)
        run([devpi, "login", "alice", "--password", "alice-pw"], env)
        run([devpi, "index", "-c", "base", "volatile=False"], env)
        run([devpi, "index", "-c", "dev", "bases=alice/base"], env)
        for index, files in built.items():
            run([devpi, "use", f"alice/{index}"], env)
            run([devpi, "upload", *map(str, files)], env)
        run([devpi, "upload", "--only-docs", str(doc_zip)], env)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    export = work / "export"
    run([str(devpi_bin / "devpi-export"), "--serverdir", str(serverdir), str(export)], env)
    assert (export / "dataindex.json").is_file()
    return DevpiExport(export, {p.name: p for fs in built.values() for p in fs}, doc_zip)


@pytest.fixture
def imported(tmp_path: Path, devpi_export: DevpiExport) -> Iterator[tuple[Path, Any]]:
    serverdir = tmp_path / "from-devpi"
    proc = run([tool("devpid"), "import", "--serverdir", str(serverdir),
                str(devpi_export.path), "--root-password", "new-root-pw",
                "--bcrypt-rounds", "4", *import_store_args()], dict(os.environ))
    yield serverdir, proc


def test_devpi_export_becomes_devpid_key_layout(
    imported: tuple[Path, Any], devpi_export: DevpiExport
) -> None:
    serverdir, proc = imported
    assert "devpi-server 6." in proc.stdout
    # argon2 hashes cannot be checked by devpid: alice is locked and named; root got a password
    assert "no usable password" in proc.stderr and "alice" in proc.stderr
    assert "devpid passwd" in proc.stderr
    store, blobs = open_store(serverdir, readonly=True)
    try:
        entries = dict(store.snapshot())
        assert entries["user/alice"]["pwhash"] == ""
        assert entries["user/alice"]["email"] == "alice@example.org"
        assert entries["user/root"]["pwhash"].startswith("$2")
        assert entries["index/alice/dev"]["bases"] == ["alice/base"]
        assert entries["index/alice/dev"]["type"] == "stage"
        assert entries["index/alice/base"]["volatile"] is False
        assert entries["index/root/pypi"]["type"] == "mirror"
        assert entries["index/root/pypi"]["mirror_url"].startswith("https://")
        assert entries["project/alice/dev/other-pkg"]["name"] == "Other_Pkg"
        assert entries["project/alice/base/hello-pkg"]["name"] == "hello-pkg"
        release = entries["release/alice/base/hello-pkg/1.0"]
        assert release["summary"] == "hello" and release["requires_python"] == ">=3.8"

        for stage, project, path in [
            ("alice/base", "hello-pkg", devpi_export.files["hello_pkg-1.0-py3-none-any.whl"]),
            ("alice/dev", "hello-pkg", devpi_export.files["hello_pkg-1.1-py3-none-any.whl"]),
            ("alice/dev", "other-pkg", devpi_export.files["Other_Pkg-2.0.tar.gz"]),
        ]:
            value = entries[keys.file(stage, project, path.name)]
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            assert value["sha256"] == sha and value["size"] == len(data)
            assert value["path"] == f"{stage}/+f/{sha[:3]}/{sha[3:16]}/{path.name}"
            assert value["yanked"] is False
            assert value["log"][0]["what"] == "upload" and value["log"][0]["who"] == "alice"
            assert value["upload_time"].endswith("Z")
            assert blobs.path(sha).read_bytes() == data
            assert store.lookup_path(value["path"]) == (keys.file(stage, project, path.name),
                                                         path.name)
            if path.name.endswith(".whl"):
                assert blobs.path(value["metadata_sha256"]).read_bytes().startswith(
                    b"Metadata-Version")
        assert entries["file/alice/base/hello-pkg/hello_pkg-1.0-py3-none-any.whl"][
            "requires_python"] == ">=3.8"
        doc = entries["doc/alice/dev/hello-pkg/1.1"]
        assert blobs.path(doc["sha256"]).read_bytes() == devpi_export.doc_zip.read_bytes()
        assert doc["filename"] == "hello-pkg-1.1.doc.zip"
    finally:
        store.close()


def test_devpi_import_refuses_tampered_file(tmp_path: Path, devpi_export: DevpiExport) -> None:
    copy = tmp_path / "export-copy"
    run(["cp", "-a", str(devpi_export.path), str(copy)], dict(os.environ))
    victim = copy / "alice" / "dev" / "other-pkg" / "2.0" / "Other_Pkg-2.0.tar.gz"
    victim.write_bytes(victim.read_bytes() + b"x")
    target = tmp_path / "nope"
    proc = run([tool("devpid"), "import", "--serverdir", str(target), str(copy)],
               dict(os.environ), check=False)
    assert proc.returncode == 1
    assert "alice/dev/other-pkg/2.0/Other_Pkg-2.0.tar.gz: sha256 mismatch" in proc.stderr
    assert not target.exists()


def test_pip_downloads_the_same_bytes_through_devpid(
    imported: tuple[Path, Any], devpi_export: DevpiExport, start_devpid: Any, tmp_path: Path
) -> None:
    serverdir, _ = imported
    server = start_devpid(init=False, name=serverdir.name)
    assert server.login("root", "new-root-pw")
    # alice's devpi password hash is unusable until an operator sets a new one
    assert requests.post(server.url + "/+login",
                         json={"user": "alice", "password": "alice-pw"}).status_code == 401
    run([tool("devpid"), "passwd", "--serverdir", str(serverdir), "alice", "--password",
         "alice-new", "--bcrypt-rounds", "4"], dict(os.environ))
    assert server.login("alice", "alice-new")

    # the sdist (pip would want to build it): straight from the simple page's link; first,
    # so a broken file route fails fast instead of through pip's retries
    page_url = f"{server.url}/alice/dev/+simple/other-pkg/"
    page = requests.get(page_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert page.ok, page.text
    (link,) = page.json()["files"]
    body = requests.get(requests.compat.urljoin(page_url, link["url"]), timeout=10).content
    assert body == devpi_export.files["Other_Pkg-2.0.tar.gz"].read_bytes()
    env = client_env(tmp_path)
    for spec, filename in [("hello-pkg==1.1", "hello_pkg-1.1-py3-none-any.whl"),
                           ("hello-pkg==1.0", "hello_pkg-1.0-py3-none-any.whl")]:
        # 1.0 lives in alice/base and is found through dev's bases
        dest = tmp_path / f"dl-{spec}"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest),
             "--retries", "0", "--timeout", "10",
             "-i", f"{server.url}/alice/dev/+simple/", spec], env)
        assert (dest / filename).read_bytes() == devpi_export.files[filename].read_bytes()
