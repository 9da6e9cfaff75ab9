"""``--blobdir``: the stored files live outside the server directory (e.g. a filesystem several
nodes share), and every command run on the server directory finds them there."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT_PASSWORD, Devpid, client_env, init_serverdir, run, tool


def _upload(node: Devpid, wheel: Path) -> None:
    data = wheel.read_bytes()
    name, version = wheel.name.split("-")[:2]
    fields = {":action": "file_upload", "protocol_version": "1", "name": name,
              "version": version, "sha256_digest": hashlib.sha256(data).hexdigest(),
              "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"}
    r = requests.post(f"{node.url}/root/dev/", data=fields, auth=("root", ROOT_PASSWORD),
                      files={"content": (wheel.name, data, "application/octet-stream")},
                      headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


def test_blobdir_holds_the_files_and_every_command_finds_them(tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    env = client_env(tmp_path)
    serverdir, blobdir = tmp_path / "server", tmp_path / "shared" / "blobs"
    init_serverdir(serverdir, None, root_pypi=False)
    node = Devpid(serverdir, args=["--blobdir", str(blobdir)]).start()
    try:
        r = node.json("PUT", "/root/dev", auth=("root", ROOT_PASSWORD), json={"bases": []})
        assert r.status_code == 200, r.text
        wheel = make_wheel(tmp_path / "dist", "in_blobdir", "1.0")
        _upload(node, wheel)
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert (blobdir / sha[:2] / sha[2:4] / sha).read_bytes() == wheel.read_bytes()
        assert not (serverdir / "+blobs" / sha[:2]).exists()
        # the node's temp area is its own directory inside the shared one
        assert [p.is_dir() for p in (blobdir / "tmp").iterdir()] == [True]
        target = tmp_path / "target"
        run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
             f"{node.url}/root/dev/+simple/", "in_blobdir==1.0"], env)
        assert any(p.name.startswith("in_blobdir") for p in target.iterdir())
    finally:
        node.stop()
    # remembered: a restart without --blobdir, export and gc use the same directory
    assert (serverdir / "blobdir.path").read_text().strip() == str(blobdir)
    dump = tmp_path / "dump"
    run([tool("devpid"), "export", "--serverdir", str(serverdir), str(dump)], env)
    assert any(p.name == sha for p in dump.rglob("*"))
    out = run([tool("devpid"), "gc", "--serverdir", str(serverdir), "--grace-seconds", "0"],
              env).stdout
    assert "removed 0" in out and (blobdir / sha[:2] / sha[2:4] / sha).is_file()
    node = Devpid(serverdir).start()
    try:
        r = requests.get(f"{node.url}/root/dev/+simple/in-blobdir/", timeout=10)
        link = r.text.split('href="', 1)[1].split('"', 1)[0]
        got = requests.get(requests.compat.urljoin(r.url, link), timeout=10)
        assert got.content == wheel.read_bytes()
    finally:
        node.stop()


def test_moving_a_server_directory_with_files_elsewhere_is_refused(
    start_devpid: Any, tmp_path: Path
) -> None:
    """Records would name files that are not in the new directory: refused, nothing changed."""
    from tests.support.pkgbuild import make_wheel

    node = start_devpid(root_pypi=False)
    r = node.json("PUT", "/root/dev", auth=("root", ROOT_PASSWORD), json={"bases": []})
    assert r.status_code == 200, r.text
    _upload(node, make_wheel(tmp_path / "dist", "stays", "1.0"))
    node.stop()
    env = client_env(tmp_path)
    proc = run([tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir",
                str(node.serverdir), "--blobdir", str(tmp_path / "elsewhere")], env,
               check=False, timeout=60)
    assert proc.returncode != 0 and "move them" in proc.stderr + proc.stdout
    assert not (node.serverdir / "blobdir.path").exists()
    proc = run([tool("devpid"), "init", "--serverdir", str(tmp_path / "new"), "--blobdir",
                str(tmp_path / "b2"), "--root-password", "x", "--bcrypt-rounds", "4"], env)
    assert (tmp_path / "new" / "blobdir.path").read_text().strip() == str(tmp_path / "b2")
