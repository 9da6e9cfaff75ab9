"""A full disk (ENOSPC) with the real daemon on a small tmpfs and real twine uploads: the
client is told the server is out of space (507, or 503 for a failed database commit with
its real error), nothing half-written is left behind, and everything works again as soon as
space is freed."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    ROOT_PASSWORD,
    Devpid,
    client_env,
    init_serverdir,
    run,
    tool,
    twine_upload,
)
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import make_wheel
from tests.test_mirror import pip_download
from tests.test_private_index import make_index, make_user, simple_json

SIZE_MB = 24


@dataclass
class FullDisk:
    server: Devpid
    mount: Path  # the tmpfs: the serverdir, with the daemon's TMPDIR (request bodies) in it
    stage: str
    auth: tuple[str, str]
    env: dict[str, str]

    def fill(self, leave: int = 0) -> None:
        """Fill the disk up, leaving about ``leave`` bytes free."""
        slack = self.mount / "slack"
        if leave:
            slack.write_bytes(os.urandom(leave))
        fd = os.open(self.mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 4096, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
                        break
        finally:
            os.close(fd)
        slack.unlink(missing_ok=True)

    def free(self) -> None:
        (self.mount / "filler").unlink(missing_ok=True)

    def twine(self, wheel: Path) -> subprocess.CompletedProcess[str]:
        return run([tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
                    "--repository-url", f"{self.server.url}/{self.stage}/",
                    "-u", self.auth[0], "-p", self.auth[1], str(wheel)], self.env, check=False)

    def leftovers(self) -> list[str]:
        """Temp files of devpid's left on the disk (blob temps, buffered bodies; on
        PostgreSQL the blob temps are in the node's own directory under ``+blobs/tmp``)."""
        return sorted(p.name for d in (self.mount / "+blobs" / "tmp", self.mount / "tmp")
                      for p in d.rglob("*") if not p.is_dir())


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullDisk]:
    base = tmp_path_factory.mktemp("diskfull")
    mount = base / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the disk-full tests needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command to mount a tmpfs for the disk-full tests")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "devpid-test",
                           str(mount)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needed to fill a disk): {done.stderr.strip()}")
    server = None
    try:
        serverdir = mount  # (its log and port file go next to it, not onto the full disk)
        init_serverdir(serverdir, None, root_pypi=False)
        (mount / "tmp").mkdir()
        old = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(mount / "tmp")  # twisted.web buffers big bodies there
        try:
            server = Devpid(serverdir, args=[]).start()
        finally:
            if old is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = old
        auth = make_user(server)
        stage = make_index(server, auth, "dev")
        full = FullDisk(server, mount, stage, auth, client_env(base))
        # A big upload while there is space: the daemon settles on its TMPDIR (Python picks
        # the temp dir on first use, skipping one it cannot write to, i.e. a full one).
        twine_upload(f"{server.url}/{stage}/", auth, full.env,
                     make_wheel(base / "warm", "warmup", "1.0", extra_bytes=200_000))
        yield full
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30,
                       check=False)


def _assert_out_of_space(result: subprocess.CompletedProcess[str], code: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(code) in output and "out of disk space" in output, output
    assert "malformed" not in output and "cannot rollback" not in output, output


def _listed(disk: FullDisk, project: str) -> dict[str, str]:
    return {f["filename"]: f["hashes"]["sha256"] for f in
            simple_json(disk.server, disk.stage, project)["files"]}


@pytest.mark.parametrize(("size", "where"), [
    (30_000, "receiving the upload"),  # a small body stays in memory: the temp blob fails
    (400_000, "buffering the request body"),  # a big one is buffered in TMPDIR first
])
def test_upload_to_a_full_disk_gets_507_and_works_once_space_is_freed(
        disk: FullDisk, tmp_path: Path, size: int, where: str) -> None:
    project = f"full{size}"
    wheel = make_wheel(tmp_path, project, "1.0", extra_bytes=size)
    disk.fill()
    try:
        _assert_out_of_space(disk.twine(wheel), 507)
        assert f"{where} failed" in disk.server.log()
        assert disk.leftovers() == [], where
        r = requests.get(f"{disk.server.url}/+api", timeout=30)  # reads go on
        assert r.status_code == 200
    finally:
        disk.free()
    twine_upload(f"{disk.server.url}/{disk.stage}/", disk.auth, disk.env, wheel)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert _listed(disk, project) == {wheel.name: sha}
    assert disk.leftovers() == []


@pytest.mark.sqlite_only(reason="on PostgreSQL the record is committed to the database, "
                         "which is not on the full disk")
def test_failed_database_commit_gets_503_with_its_real_error(
        disk: FullDisk, tmp_path: Path) -> None:
    """The files fit, the record (2 MB: summary and description within the 1 MiB a field
    may have) does not: SQLite fails the commit."""
    project = "fulldb"
    wheel = make_wheel(tmp_path, project, "1.0", summary="s" * 1_000_000,
                       description="x" * 1_000_000)
    disk.fill(leave=6_000_000)  # room for the body (buffered) and the 2 MB METADATA blob
    try:
        result = disk.twine(wheel)
        _assert_out_of_space(result, 503)
        assert "database or disk is full" in result.stdout + result.stderr
        assert disk.leftovers() == []
        r = requests.get(f"{disk.server.url}/{disk.stage}/+simple/{project}/", timeout=30)
        assert r.status_code == 404  # nothing was recorded
    finally:
        disk.free()
    twine_upload(f"{disk.server.url}/{disk.stage}/", disk.auth, disk.env, wheel)
    assert list(_listed(disk, project)) == [wheel.name]
    assert "cannot rollback" not in disk.server.log()


def test_mirror_download_onto_a_full_disk_fails_cleanly(
        disk: FullDisk, upstream: FakePyPI, tmp_path: Path) -> None:
    """pip never gets a short file as complete, the temp blob goes at once, and the next
    download after space was freed is fresh and whole."""
    name = f"fullmirror{uuid.uuid4().hex[:6]}"
    wheel = upstream.publish(name, "1.0", extra_bytes=2_000_000)
    server, auth = disk.server, disk.auth
    r = server.json("PUT", f"/{auth[0]}/mirror", auth=("root", ROOT_PASSWORD),  # root's to make
                    json={"type": "mirror", "mirror_url": upstream.url})
    assert r.status_code == 200, r.text
    index = f"{server.url}/{auth[0]}/mirror/+simple/"
    assert simple_json(server, f"{auth[0]}/mirror", name)["files"]  # the page is cached
    disk.fill()
    try:
        out = pip_download(disk.env, index, name, tmp_path / "first", check=False)
        assert not (tmp_path / "first" / wheel.name).exists(), out
        assert disk.leftovers() == []
        assert "storing a mirror file failed" in server.log()
    finally:
        disk.free()
    pip_download(disk.env, index, name, tmp_path / "second")
    got = (tmp_path / "second" / wheel.name).read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(wheel.read_bytes()).digest()
    assert disk.leftovers() == []
