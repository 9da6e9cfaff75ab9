"""The generated nginx site in front of a real devpid: pip and twine through nginx, release
files sent by nginx from the blob store after devpid checked the request."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from devpid.genconfig import GenConfigOptions, render
from tests.conftest import Devpid, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import make_wheel
from tests.test_genconfig import free_port, require_nginx, start_nginx, stop_nginx


def access_lines(server: Devpid, needle: str) -> list[str]:
    time.sleep(0.5)  # access lines are flushed in batches
    return [line for line in server.log().splitlines()
            if "[devpid.access#info]" in line and needle in line]


def test_pip_and_twine_through_generated_nginx(start_devpid: Any, tmp_path: Path,
                                               env: dict[str, str]) -> None:
    require_nginx()
    fake = FakePyPI(tmp_path / "up")
    fake.start()
    nginx = None
    try:
        fake.publish("through-nginx", "1.0")
        server: Devpid = start_devpid(upstream_url=fake.url)
        port = free_port()
        files = render(GenConfigOptions(
            serverdir=server.serverdir, port=server.port, nginx_port=port,
            server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
            nginx_address="127.0.0.1", cache_dir=tmp_path / "nginx-cache",
        ))
        site = tmp_path / "devpid-nginx.conf"
        site.write_text(files["devpid-nginx.conf"])
        nginx = start_nginx(tmp_path / "nginx", site, port)
        front = f"http://127.0.0.1:{port}"
        assert requests.put(f"{front}/alice", json={"password": "pw"},
                            headers={"Accept": "application/json"}).status_code == 201
        assert requests.put(f"{front}/alice/dev", json={"bases": "root/pypi"}, auth=("alice", "pw"),
                            headers={"Accept": "application/json"}).ok
        wheel = make_wheel(tmp_path / "dist", "private-pkg", "1.0", extra_bytes=200_000)
        run([tool("twine"), "upload", "--repository-url", f"{front}/alice/dev/", "-u", "alice",
             "-p", "pw", str(wheel)], env)
        index = f"{front}/alice/dev/+simple/"
        for spec in ("private-pkg", "through-nginx"):
            run([tool("pip"), "download", "--no-deps", "-d", str(tmp_path / "dl"), "-i", index,
                 spec], env)
        got = (tmp_path / "dl" / wheel.name).read_bytes()
        assert got == wheel.read_bytes()
        # the private file went out through X-Accel-Redirect: devpid sent 0 body bytes
        lines = access_lines(server, f"/{wheel.name}")
        assert lines, server.log()[-2000:]
        assert all(re.search(r" 200 0 ", line) for line in lines), lines
        # absolute URLs name the front end, and the page came through gzip-capable nginx
        api = requests.get(f"{front}/alice/dev/+api").json()["result"]
        assert api["simpleindex"] == f"{front}/alice/dev/+simple/"
        # the mirror file was streamed once, then is served from disk by nginx as well
        page = requests.get(f"{front}/root/pypi/+simple/through-nginx/",
                            headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
        url = f"{front}/root/pypi/+simple/through-nginx/" + page["files"][0]["url"]
        body = requests.get(url).content
        assert hashlib.sha256(body).hexdigest() == page["files"][0]["hashes"]["sha256"]
        # pages are reused by nginx for a second, then asked again: a new upload shows up
        accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
        page_url = f"{front}/alice/dev/+simple/private-pkg/"
        requests.get(page_url, headers=accept)
        cached = requests.get(page_url, headers=accept)
        assert cached.headers.get("X-Devpid-Page-Cache") == "HIT"
        assert cached.headers.get("Content-Encoding") == "gzip"
        newer = make_wheel(tmp_path / "dist", "private-pkg", "2.0")
        run([tool("twine"), "upload", "--repository-url", f"{front}/alice/dev/", "-u", "alice",
             "-p", "pw", str(newer)], env)
        deadline = time.monotonic() + 5
        versions: list[str] = []
        while time.monotonic() < deadline and "2.0" not in versions:
            versions = requests.get(page_url, headers=accept).json()["versions"]
            time.sleep(0.2)
        assert "2.0" in versions
        # nginx sends a checked file from disk for a second at most: a deleted one is gone
        # (devpid's JSON answer) within the page-cache second.
        files = requests.get(page_url, headers=accept).json()["files"]
        file_url = urljoin(page_url, next(f["url"] for f in files if f["filename"] == wheel.name))
        assert requests.get(file_url).content == wheel.read_bytes()
        assert requests.get(file_url + ".metadata").content.startswith(b"Metadata-Version")
        deleted = requests.delete(f"{front}/alice/dev/private-pkg/1.0", auth=("alice", "pw"),
                                  headers={"Accept": "application/json"})
        assert deleted.ok, deleted.text
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and requests.get(file_url).status_code == 200:
            time.sleep(0.1)
        gone = requests.get(file_url)
        assert gone.status_code in (404, 410) and gone.json()["message"], gone.text
        filename = page["files"][0]["filename"]
        assert [p for _, p, _ in fake.requests if p == f"/files/{filename}"] == [
            f"/files/{filename}"]
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        fake.close()


def test_generated_deployment_restricts_registration_and_routes_file_writes(
    start_devpid: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    """gen-config's unit runs devpid with --restrict-modify root; behind its nginx, POST (tox
    results) and DELETE on +f/ URLs reach devpid instead of nginx's static 405."""
    import shlex

    from tests.conftest import ROOT_PASSWORD

    require_nginx()
    port = free_port()
    opts = GenConfigOptions(serverdir=tmp_path / "server", nginx_port=port,
                            server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
                            nginx_address="127.0.0.1", cache_dir=tmp_path / "nginx-cache")
    unit = render(opts)["devpid.service"]
    exec_start = shlex.split(next(line for line in unit.splitlines()
                                  if line.startswith("ExecStart="))[len("ExecStart="):])
    flag = exec_start.index("--restrict-modify")
    server: Devpid = start_devpid(*exec_start[flag:flag + 2], root_pypi=False)
    files = render(GenConfigOptions(**{**opts.__dict__, "port": server.port}))
    site = tmp_path / "devpid-nginx.conf"
    site.write_text(files["devpid-nginx.conf"])
    nginx = start_nginx(tmp_path / "nginx", site, port)
    try:
        front = f"http://127.0.0.1:{port}"
        accept = {"Accept": "application/json"}
        root = ("root", ROOT_PASSWORD)
        r = requests.put(f"{front}/eve", json={"password": "pw"}, headers=accept)
        assert r.status_code == 403, r.text  # no open registration
        assert requests.put(f"{front}/alice", json={"password": "pw"}, headers=accept,
                            auth=root).status_code == 201
        r = requests.put(f"{front}/alice/own", json={}, auth=("alice", "pw"), headers=accept)
        assert r.status_code == 403, r.text  # nor indexes, except by root
        assert requests.put(f"{front}/alice/dev", json={}, auth=root, headers=accept).ok
        wheel = make_wheel(tmp_path / "dist", "written-pkg", "1.0")
        run([tool("twine"), "upload", "--repository-url", f"{front}/alice/dev/", "-u", "alice",
             "-p", "pw", str(wheel)], env)
        page = requests.get(f"{front}/alice/dev/+simple/written-pkg/",
                            headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
        file_url = urljoin(f"{front}/alice/dev/+simple/written-pkg/", page["files"][0]["url"])
        r = requests.post(file_url, json={"reportversion": "1", "testenvs": {}}, headers=accept)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
        r = requests.delete(file_url, auth=("alice", "pw"), headers=accept)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
        assert requests.get(f"{front}/alice/dev/written-pkg", headers=accept).status_code == 404
    finally:
        stop_nginx(nginx)
