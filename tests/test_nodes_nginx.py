"""Two real devpid nodes on one PostgreSQL database and one shared ``--blobdir``, behind the
nginx site ``devpid gen-config --node ... --node ...`` writes (started on loopback with its
own prefix). What an operator of that deployment relies on: twine uploads and pip/uv
installs through nginx, release files sent by nginx from the shared blob directory, every
node serving everything, an install still working through nginx after one node is killed,
that node catching up when it comes back, and ``devpid gc`` on one node never deleting what
another node's commits reference."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devpid.genconfig import GenConfigOptions, render
from tests.conftest import ROOT_PASSWORD, Devpid, client_env, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.pg import requires_pg
from tests.support.polling import wait_serial
from tests.test_genconfig import RunningNginx, free_port, require_nginx, start_nginx, stop_nginx

pytestmark = requires_pg


@dataclass
class Deployment:
    url: str  # the database
    a: Devpid
    b: Devpid
    front: str  # nginx
    blobdir: Path
    env: dict[str, str]
    nginx: RunningNginx
    base: Path


def _serial(url: str) -> int:
    return int(requests.get(url + "/+api", timeout=5).headers["X-Devpi-Serial"])




def _access(node: Devpid, needle: str) -> list[str]:
    return [line for line in node.log().splitlines()
            if "[devpid.access#info]" in line and needle in line]


def _wait_access(nodes: list[Devpid], needle: str, timeout: float = 5.0) -> list[str]:
    """Access lines are flushed in batches: wait until one shows up."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for node in nodes for line in _access(node, needle)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_nginx()
    from tests.support.pg import fresh_database

    base = tmp_path_factory.mktemp("deploy")
    env = client_env(base)
    url = fresh_database()
    blobdir = base / "shared-blobs"
    secret = base / "srv" / ".secret"
    upstream = FakePyPI(base / "up")
    upstream.start()
    upstream.publish("from-mirror", "1.0")
    nodes: list[Devpid] = []
    nginx = None
    try:
        for name in ("a", "b"):  # as the generated unit's install hint says: a creates, b joins
            out = run([tool("devpid"), "init", "--serverdir", str(base / "srv" / name),
                       "--store", url, "--blobdir", str(blobdir), "--root-password",
                       ROOT_PASSWORD, "--bcrypt-rounds", "4", "--mirror-url", upstream.url],
                      env).stdout
            assert ("joins the database" in out) == (name == "b"), out
            nodes.append(Devpid(base / "srv" / name,
                                args=["--secretfile", str(secret)]).start())
        a, b = nodes
        port = free_port()
        files = render(GenConfigOptions(
            serverdir=base / "srv", nodes=[a.url, b.url], blob_dir=blobdir,
            nginx_port=port, server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
            nginx_address="127.0.0.1", cache_dir=base / "nginx-cache",
        ))
        site = base / "devpid-nginx.conf"
        site.write_text(files["devpid-nginx.conf"])
        nginx = start_nginx(base / "nginx", site, port)
        yield Deployment(url, a, b, f"http://127.0.0.1:{port}", blobdir, env, nginx, base)
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        for node in nodes:
            node.stop()
        upstream.close()


def _twine(d: Deployment, wheel: Path) -> None:
    run([tool("twine"), "upload", "--repository-url", f"{d.front}/alice/dev/", "-u", "alice",
         "-p", "pw", str(wheel)], d.env)


def _pip_install(d: Deployment, target: Path, *specs: str) -> None:
    run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
         f"{d.front}/alice/dev/+simple/", *specs], d.env)


def _installed(target: Path, dist: str) -> bool:
    return any(p.name.startswith(dist) for p in target.iterdir())


def test_upload_install_failover_and_catch_up_through_nginx(deployment: Deployment,
                                                            tmp_path: Path) -> None:
    from tests.support.pkgbuild import make_wheel

    d = deployment
    accept = {"Accept": "application/json"}
    assert requests.put(f"{d.front}/alice", json={"password": "pw"}, headers=accept,
                        timeout=10).status_code == 201
    r = requests.put(f"{d.front}/alice/dev", json={"bases": "root/pypi"}, auth=("alice", "pw"),
                     headers=accept, timeout=10)
    assert r.ok, r.text
    wheel = make_wheel(tmp_path / "dist", "across-nginx", "1.0", extra_bytes=100_000)
    _twine(d, wheel)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (d.blobdir / sha[:2] / sha[2:4] / sha).read_bytes() == wheel.read_bytes()

    # pip and uv install through nginx: the private wheel and a mirrored one
    _pip_install(d, tmp_path / "pip", "across-nginx==1.0", "from-mirror")
    assert _installed(tmp_path / "pip", "across_nginx")
    assert _installed(tmp_path / "pip", "from_mirror")
    run([tool("uv"), "pip", "install", "--no-deps", "--target", str(tmp_path / "uv"),
         "--index-url", f"{d.front}/alice/dev/+simple/", "across-nginx==1.0"], d.env)
    assert _installed(tmp_path / "uv", "across_nginx")
    # the files went out by X-Accel-Redirect from the shared directory: the node that
    # checked the request sent no body
    lines = _wait_access([d.a, d.b], f"/{wheel.name}")
    assert lines and all(re.search(r" 200 0 ", line) for line in lines), lines

    # each node answers for everything, whichever node took the upload
    serial = _serial(d.front)
    for node in (d.a, d.b):
        wait_serial(node, serial)
        page = requests.get(f"{node.url}/alice/dev/+simple/across-nginx/",
                            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                            timeout=10).json()
        file_url = requests.compat.urljoin(f"{node.url}/alice/dev/+simple/across-nginx/",
                                           page["files"][0]["url"])
        # straight from the node, without nginx: it reads the shared directory itself
        assert requests.get(file_url.replace(d.front, node.url),
                            timeout=10).content == wheel.read_bytes()

    # a login token one node issued works on the other (the unit's shared --secretfile)
    token = d.a.login("alice", "pw")
    r = d.b.json("PATCH", "/alice/dev", auth=("alice", token), json={"title": "by token"})
    assert r.status_code == 200, r.text

    # nginx keeps this client (its address) on one node: kill that one (SIGKILL)
    marker = f"/alice/dev/+simple/across-nginx/?probe={time.monotonic_ns()}"
    assert requests.get(d.front + marker, timeout=10).ok
    lines_a = _wait_access([d.a], "probe=")
    victim, survivor = (d.a, d.b) if lines_a else (d.b, d.a)
    assert _wait_access([victim], "probe="), "neither node logged the request"
    victim.kill9()
    target = tmp_path / "after-kill"
    _pip_install(d, target, "across-nginx==1.0", "from-mirror")
    assert _installed(target, "across_nginx") and _installed(target, "from_mirror")
    # writes go on through nginx on the survivor
    newer = make_wheel(tmp_path / "dist", "across-nginx", "2.0")
    _twine(d, newer)
    # nginx's page cache is keyed by the request, not the node: it may show the page
    # from before the upload for up to --page-cache-seconds (1), then the new one
    page_url = f"{d.front}/alice/dev/+simple/across-nginx/"
    deadline = time.monotonic() + 5
    for accept in ("text/html", "application/vnd.pypi.simple.v1+json"):  # each is cached apart
        while "across_nginx-2.0" not in requests.get(page_url, headers={"Accept": accept},
                                                     timeout=10).text:
            assert time.monotonic() < deadline, "nginx kept showing the page before the upload"
            time.sleep(0.2)
    assert any(requests.get(page_url, timeout=10).headers.get("X-Devpid-Page-Cache") == "HIT"
               for _ in range(5))
    # pip's own Accept is one more cache variant, possibly stored just before the upload: it
    # too is at most --page-cache-seconds (1) old
    time.sleep(1.2)
    _pip_install(d, tmp_path / "v2", "across-nginx==2.0")
    serial = _serial(survivor.url)

    # the killed node comes back on its port and catches up before it answers
    victim.start()
    assert _serial(victim.url) >= serial
    r = requests.get(f"{victim.url}/alice/dev/+simple/across-nginx/", timeout=10)
    assert "across_nginx-2.0" in r.text, r.text
    _pip_install(d, tmp_path / "back", "across-nginx==2.0")
    assert _installed(tmp_path / "back", "across_nginx")


def test_gc_on_a_node_keeps_what_the_other_node_committed(deployment: Deployment,
                                                          tmp_path: Path) -> None:
    """Node A is down (its local view is behind) while node B takes an upload that reuses
    nothing; ``devpid gc --grace-seconds 0`` on A must still keep B's blob: references are
    read from the shared database, not from A's stale view."""
    from tests.support.pkgbuild import make_wheel

    d = deployment
    r = d.a.json("PUT", "/gcuser", json={"password": "pw"})
    assert r.status_code == 201, r.text
    wait_serial(d.b, int(r.headers["X-Devpi-Serial"]))
    r = d.b.json("PUT", "/gcuser/dev", auth=("gcuser", "pw"), json={"bases": []})
    assert r.status_code == 200, r.text
    d.a.stop()
    try:
        wheel = make_wheel(tmp_path, "kept-by-b", "1.0")
        data = wheel.read_bytes()
        fields = {":action": "file_upload", "protocol_version": "1", "name": "kept-by-b",
                  "version": "1.0", "sha256_digest": hashlib.sha256(data).hexdigest(),
                  "filetype": "bdist_wheel", "pyversion": "py3", "metadata_version": "2.1"}
        r = requests.post(f"{d.b.url}/gcuser/dev/", data=fields, auth=("gcuser", "pw"),
                          files={"content": (wheel.name, data, "application/octet-stream")},
                          headers={"Accept": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text
        sha = hashlib.sha256(data).hexdigest()
        blob = d.blobdir / sha[:2] / sha[2:4] / sha
        orphan = d.blobdir / "ab" / "cd" / ("abcd" + "0" * 60)  # referenced by nobody
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"orphan")
        out = run([tool("devpid"), "gc", "--serverdir", str(d.a.serverdir),
                   "--grace-seconds", "0"], d.env).stdout
        assert blob.is_file(), out
        assert not orphan.exists(), out
        assert "removed 1 " in out, out
    finally:
        d.a.start()
    r = requests.get(f"{d.front}/gcuser/dev/+simple/kept-by-b/", timeout=10)
    link = r.text.split('href="', 1)[1].split('"', 1)[0]
    assert requests.get(requests.compat.urljoin(r.url, link), timeout=10).content == data


def test_nginx_spreads_requests_over_both_nodes_without_stickiness(
    deployment: Deployment, tmp_path: Path
) -> None:
    """--sticky none (least_conn): both nodes take requests of one client."""
    d = deployment
    port = free_port()
    site = tmp_path / "site.conf"
    site.write_text(render(GenConfigOptions(
        serverdir=d.base / "srv", nodes=[d.a.url, d.b.url], blob_dir=d.blobdir, sticky="none",
        nginx_port=port, server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
        nginx_address="127.0.0.1", cache_dir=tmp_path / "cache", page_cache_seconds=0,
    ))["devpid-nginx.conf"])
    nginx = start_nginx(tmp_path / "nginx", site, port)
    try:
        tag = f"spread{time.monotonic_ns()}"
        for n in range(20):
            assert requests.get(f"http://127.0.0.1:{port}/+api?{tag}={n}", timeout=10).ok
        assert _wait_access([d.a], tag) and _wait_access([d.b], tag)
    finally:
        stop_nginx(nginx)
