"""Issue 15, item 1: ``acl_read``. A private index is refused on every read path (401 with a
Basic challenge without credentials, 403 with someone else's), through inheritance, in the
listings, the web view and search, by the fast front door and its caches, and behind the
generated nginx; real pip and uv get in with credentials in the URL and in netrc."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid.genconfig import GenConfigOptions, render
from tests.conftest import Devpid, client_env
from tests.support.pkgbuild import make_wheel
from tests.test_genconfig import free_port, require_nginx, start_nginx, stop_nginx
from tests.test_private_index import http_upload, make_index, make_user, pip_download, uv_install
from tests.test_replication import cluster, secretfile, serial_of, wait_serial  # noqa: F401

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass
class Private:
    owner: tuple[str, str]
    reader: tuple[str, str]
    other: tuple[str, str]
    stage: str  # acl_read = [reader]
    child: str  # public itself, inherits from stage
    project: str
    wheel: Path
    file_path: str  # /USER/INDEX/+f/... of the wheel


@pytest.fixture(scope="module")
def private(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Private:
    owner = make_user(devpid_server)
    reader = make_user(devpid_server)
    other = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "priv", acl_read=[reader[0]])
    child = make_index(devpid_server, owner, "child", bases=[stage])
    project = f"secret-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp_path_factory.mktemp("dist"), project, "1.0")
    r = http_upload(devpid_server, owner, stage, wheel, name=project, version="1.0")
    assert r.ok, r.text
    page = requests.get(f"{devpid_server.url}/{stage}/+simple/{project}/", auth=owner,
                        headers={"Accept": SIMPLE_JSON}).json()
    url = page["files"][0]["url"]
    file_path = "/" + stage + "/+f/" + url.split("/+f/", 1)[1].split("#")[0]
    return Private(owner, reader, other, stage, child, project, wheel, file_path)


def read_paths(p: Private) -> list[str]:
    s, proj = p.stage, p.project
    return [
        f"/{s}", f"/{s}/", f"/{s}/+simple/", f"/{s}/+simple/{proj}/", f"/{s}/+simple/{proj}",
        f"/{s}/{proj}", f"/{s}/{proj}/1.0", f"/{s}/pypi/{proj}/json", f"/{s}/+api",
        p.file_path, p.file_path + ".metadata",
        f"/{p.child}/+simple/{proj}/", f"/{p.child}", f"/{p.child}/+simple/",
    ]


def test_every_read_path_is_refused_anonymous_401_other_user_403(
        devpid_server: Devpid, private: Private) -> None:
    for path in read_paths(private):
        for accept in ("application/json", SIMPLE_JSON, "text/html"):
            r = requests.get(devpid_server.url + path, headers={"Accept": accept})
            assert r.status_code == 401, (path, accept, r.status_code)
            assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
            assert private.project.encode() not in r.content
            r = requests.get(devpid_server.url + path, headers={"Accept": accept},
                             auth=private.other)
            assert r.status_code == 403, (path, accept, r.status_code)
            assert private.project.encode() not in r.content
        for who in (private.reader, private.owner, ("root", "root-secret")):
            r = requests.get(devpid_server.url + path, auth=who,
                             headers={"Accept": "application/json"})
            assert r.status_code == 200, (path, who, r.status_code, r.text)
    for path in (f"/{private.stage}", f"/{private.stage}/{private.project}"):  # web view
        r = requests.get(devpid_server.url + path, auth=private.reader,
                         headers={"Accept": "text/html"})
        assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]


def test_fast_paths_and_page_cache_never_serve_a_private_page_to_others(
        devpid_server: Devpid, private: Private) -> None:
    page = f"{devpid_server.url}/{private.stage}/+simple/{private.project}/"
    pip = {"User-Agent": "pip/24.0", "Accept": SIMPLE_JSON}
    for _ in range(3):  # the reader's requests fill the page cache and the known-file map
        assert requests.get(page, headers=pip, auth=private.reader).status_code == 200
        assert requests.get(devpid_server.url + private.file_path, headers=pip,
                            auth=private.reader).content == private.wheel.read_bytes()
    with requests.Session() as keepalive:  # the fast front door answers keep-alive GETs
        for _ in range(3):
            assert keepalive.get(page, headers=pip).status_code == 401
            assert keepalive.get(devpid_server.url + private.file_path,
                                 headers=pip).status_code == 401
            r = keepalive.get(page, headers=pip, auth=private.other)
            assert r.status_code == 403
    # nginx's file check: no blob to send for a caller who may not read
    check = requests.get(devpid_server.url + private.file_path,
                         headers={"X-Devpid-Check": "1"})
    assert check.status_code == 401 and "X-Devpid-Blob" not in check.headers
    ok = requests.get(devpid_server.url + private.file_path,
                      headers={"X-Devpid-Check": "1"}, auth=private.reader)
    assert ok.status_code == 200 and ok.headers["X-Devpid-Blob"]
    assert ok.headers["X-Accel-Expires"] == "0"  # never reused by nginx for someone else


def test_listings_web_view_and_search_hide_unreadable_indexes(
        devpid_server: Devpid, private: Private) -> None:
    owner = private.owner[0]
    priv, child = private.stage.split("/")[1], private.child.split("/")[1]
    for who, visible in ((None, False), (private.other, False), (private.reader, True),
                         (private.owner, True)):
        root = devpid_server.json("GET", "/", auth=who).json()["result"]
        user = devpid_server.json("GET", f"/{owner}", auth=who).json()["result"]
        for listing in (root[owner]["indexes"], user["indexes"]):
            assert (priv in listing) is visible and (child in listing) is visible
        html = requests.get(f"{devpid_server.url}/{owner}", auth=who,
                            headers={"Accept": "text/html"}).text
        assert (private.stage in html) is visible
        hits = requests.get(f"{devpid_server.url}/+search", params={"q": private.project},
                            auth=who, headers={"Accept": "application/json"})
        if hits.status_code == 200:
            stages = {h["stage"] for h in hits.json()["result"]}
            assert visible or private.stage not in stages


def test_acl_read_is_validated_like_the_other_acls(devpid_server: Devpid) -> None:
    owner = make_user(devpid_server)
    r = devpid_server.json("PUT", f"/{owner[0]}/x", auth=owner,
                           json={"acl_read": ["nosuchuser-" + uuid.uuid4().hex[:6]]})
    assert r.status_code == 400 and "unknown users" in r.json()["message"]
    stage = make_index(devpid_server, owner, "y", acl_read=":authenticated:")
    config = devpid_server.json("GET", f"/{stage}", auth=owner).json()["result"]
    assert config["acl_read"] == [":AUTHENTICATED:"]
    someone = make_user(devpid_server)
    assert devpid_server.json("GET", f"/{stage}/+simple/").status_code == 401
    assert devpid_server.json("GET", f"/{stage}/+simple/", auth=someone).status_code == 200
    # an index without acl_read (every index made before) reads as before
    plain = make_index(devpid_server, owner, "z")
    assert "acl_read" not in devpid_server.json("GET", f"/{plain}").json()["result"]
    # back to public with the PATCH form
    r = devpid_server.json("PATCH", f"/{stage}", auth=owner, json=["acl_read=:ANONYMOUS:"])
    assert r.ok, r.text
    assert devpid_server.json("GET", f"/{stage}/+simple/").status_code == 200


def test_push_from_an_unreadable_index_is_refused(devpid_server: Devpid,
                                                   private: Private) -> None:
    target = make_index(devpid_server, private.other, f"t{uuid.uuid4().hex[:6]}")
    r = devpid_server.json("POST", f"/{private.stage}", auth=private.other, json={
        "name": private.project, "version": "1.0", "targetindex": target})
    assert r.status_code == 403, r.text


def _netrc(env: dict[str, str], host: str, auth: tuple[str, str]) -> None:
    path = Path(env["HOME"]) / ".netrc"
    path.write_text(f"machine {host}\nlogin {auth[0]}\npassword {auth[1]}\n")
    path.chmod(0o600)
    env["NETRC"] = str(path)


def _clients(base: str, p: Private, tmp: Path) -> None:
    """pip and uv: refused without credentials, in with them in the URL and in netrc."""
    host = base.split("://", 1)[1]
    index = f"{base}/{p.stage}/+simple/"
    with_url = index.replace("://", f"://{p.reader[0]}:{p.reader[1]}@", 1)
    anon = client_env(tmp / "anon")
    names, out = pip_download(anon, index, p.project, check=False)
    assert names == [], out
    installed, out = uv_install(anon, index, p.project, check=False)
    assert installed == [] and "401" in out, out
    names, _ = pip_download(client_env(tmp / "pip-url"), with_url, p.project)
    assert names == [p.wheel.name]
    installed, _ = uv_install(client_env(tmp / "uv-url"), with_url, p.project)
    assert len(installed) == 1
    netrc = client_env(tmp / "netrc")
    _netrc(netrc, host.rsplit(":", 1)[0], p.reader)
    names, _ = pip_download(netrc, index, p.project)
    assert names == [p.wheel.name]
    installed, _ = uv_install(netrc, index, p.project)
    assert len(installed) == 1
    other = client_env(tmp / "other")
    names, out = pip_download(other, index.replace("://", f"://{p.other[0]}:{p.other[1]}@"),
                              p.project, check=False)
    assert names == [], out


def test_pip_and_uv_with_url_and_netrc_credentials_direct(
        devpid_server: Devpid, private: Private, tmp_path: Path) -> None:
    _clients(devpid_server.url, private, tmp_path)


@pytest.fixture(scope="module")
def front(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_nginx()
    tmp = tmp_path_factory.mktemp("nginx")
    port = free_port()
    files = render(GenConfigOptions(
        serverdir=devpid_server.serverdir, port=devpid_server.port, nginx_port=port,
        server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
        nginx_address="127.0.0.1", cache_dir=tmp / "cache", page_cache_seconds=30,
    ))
    site = tmp / "devpid-nginx.conf"
    site.write_text(files["devpid-nginx.conf"])
    nginx = start_nginx(tmp / "nginx", site, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_nginx(nginx)


def test_pip_and_uv_behind_nginx(devpid_server: Devpid, front: str, private: Private,
                                 tmp_path: Path) -> None:
    _clients(front, private, tmp_path)
    # and nothing changes for an index without acl_read, direct or behind nginx
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "open")
    project = f"open-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp_path, project, "1.0")
    assert http_upload(devpid_server, owner, stage, wheel, name=project, version="1.0").ok
    for n, base in enumerate((devpid_server.url, front)):
        names, _ = pip_download(client_env(tmp_path / f"open{n}"), f"{base}/{stage}/+simple/",
                                project)
        assert names == [wheel.name]


def test_nginx_caches_serve_nothing_private_to_others(front: str, private: Private) -> None:
    page = f"{front}/{private.stage}/+simple/{private.project}/"
    pip = {"User-Agent": "pip/24.0", "Accept": SIMPLE_JSON}
    for _ in range(2):
        r = requests.get(page, headers=pip, auth=private.reader)
        assert r.status_code == 200 and r.headers.get("X-Devpid-Page-Cache") != "HIT"
        f = requests.get(front + private.file_path, headers=pip, auth=private.reader)
        assert f.content == private.wheel.read_bytes()
        assert "public" not in f.headers.get("Cache-Control", "")
    for who, code in ((None, 401), (private.other, 403)):
        r = requests.get(page, headers=pip, auth=who)
        assert r.status_code == code and private.project.encode() not in r.content
        f = requests.get(front + private.file_path, headers=pip, auth=who)
        assert f.status_code == code, f.status_code
        assert f.content != private.wheel.read_bytes()
    assert requests.get(front + private.file_path).headers["WWW-Authenticate"].startswith(
        "Basic realm=")


def test_replicas_apply_acl_read_and_accept_api_tokens(cluster: Any) -> None:  # noqa: F811
    """The replica gets every config, user and token record with the changelog (which only
    it may read) and refuses its own readers as the primary does."""
    primary = cluster.primary()
    owner, reader, other = (make_user(primary) for _ in range(3))
    stage = make_index(primary, owner, "priv", acl_read=[reader[0]])
    r = primary.json("POST", f"/{reader[0]}/+tokens", auth=reader,
                     json={"indexes": [stage], "actions": ["read"]})
    token = r.json()["result"]["token"]
    replica = cluster.replica(primary)
    wait_serial(replica, serial_of(primary))
    url = f"{replica.url}/{stage}/+simple/"
    r = requests.get(url)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(url, auth=other).status_code == 403
    assert requests.get(url, auth=reader).status_code == 200
    assert requests.get(url, auth=(reader[0], token)).status_code == 200
    listing = replica.json("GET", f"/{owner[0]}").json()["result"]["indexes"]
    assert "priv" not in listing
