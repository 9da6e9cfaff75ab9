"""Mirror indexes through real pip and uv, against a real (fake) upstream on loopback that we
stop, hang, corrupt and restart."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT_PASSWORD, Devpid, run, tool
from tests.support.fakepypi import FakePyPI

ROOT = ("root", ROOT_PASSWORD)

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    """An upstream owned by this module, so stopping it disturbs no other test."""
    fake = FakePyPI(tmp_path_factory.mktemp("mirror-upstream"))
    fake.start()
    yield fake
    fake.close()


@pytest.fixture
def mirror(devpid_server: Devpid, up: FakePyPI, unique: str) -> str:
    """A fresh mirror index (``user/index``) of ``up`` with a 1 s cache expiry."""
    user = f"m{unique}"
    assert devpid_server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    r = devpid_server.json(  # mirrors are root's to create (--mirror-admins)
        "PUT", f"/{user}/mirror", auth=ROOT,
        json={"type": "mirror", "mirror_url": up.url, "mirror_cache_expiry": "1"},
    )
    assert r.status_code == 200, r.text
    return f"{user}/mirror"


def simple_json(server: Devpid, stage: str, project: str, **kw: object) -> requests.Response:
    return requests.get(f"{server.url}/{stage}/+simple/{project}/",
                        headers={"Accept": JSON_ACCEPT}, **kw)  # type: ignore[arg-type]


def pip_download(env: dict[str, str], index: str, spec: str, dest: Path,
                 check: bool = True) -> str:
    proc = run([tool("pip"), "download", "--no-deps", "-d", str(dest), "-i", index, spec,
                "--timeout", "10", "--retries", "0"], env, check=check)
    return proc.stdout + proc.stderr


def test_pip_and_uv_install_through_root_pypi(devpid_server: Devpid, upstream: FakePyPI,
                                              env: dict[str, str], tmp_path: Path,
                                              unique: str) -> None:
    name = f"mirrored-{unique}"
    upstream.publish(name, "1.0")
    upstream.publish(name, "2.0", requires_python=">=3.8")
    upstream.publish(name, "3.0", requires_python=">=3.99")
    index = devpid_server.url + "/root/pypi/+simple/"
    out = pip_download(env, index, name, tmp_path / "pip")
    assert f"{name.replace('-', '_')}-2.0-py3-none-any.whl" in "".join(
        p.name for p in (tmp_path / "pip").iterdir()), out
    proc = run([tool("uv"), "pip", "install", "--target", str(tmp_path / "uv"),
                "--index-url", index, name], env)
    assert "==2.0" in proc.stdout + proc.stderr
    page = simple_json(devpid_server, "root/pypi", name).json()
    assert page["meta"]["api-version"].startswith("1.")
    assert {f["filename"]: f.get("requires-python") for f in page["files"]}[
        f"{name.replace('-', '_')}-3.0-py3-none-any.whl"] == ">=3.99"
    for f in page["files"]:
        assert f["upload-time"].endswith("Z") and f["size"] > 0
        assert f["url"].startswith("../../../../root/pypi/+f/")
    # the downloaded wheel is now a stored file with metadata served from the cache
    wheel = next(f for f in page["files"] if "2.0" in f["filename"])
    meta = requests.get(f"{devpid_server.url}/root/pypi/+simple/{name}/{wheel['url']}.metadata")
    assert meta.status_code == 200 and b"Version: 2.0" in meta.content


def test_upstream_down_serves_cache_and_fails_fast_for_unknown(
    devpid_server: Devpid, up: FakePyPI, mirror: str, env: dict[str, str], tmp_path: Path,
    unique: str,
) -> None:
    name = f"cached-{unique}"
    up.publish(name, "1.0")
    index = f"{devpid_server.url}/{mirror}/+simple/"
    pip_download(env, index, name, tmp_path / "first")
    up.stop()
    try:
        time.sleep(1.2)  # let the 1 s cache expire: pages are now stale
        out = pip_download(env, index, name, tmp_path / "again")
        assert "Successfully downloaded" in out
        # a never-seen project: a clear upstream error, not "does not exist"
        r = simple_json(devpid_server, mirror, f"never-{unique}", timeout=10)
        assert r.status_code in (502, 503, 504), r.text
        assert r.headers["Content-Type"] == "application/json"
        assert "upstream" in r.json()["message"]
        assert "does not exist" not in r.json()["message"]
        status = devpid_server.json("GET", "/+status").json()["result"]["mirrors"][mirror]
        assert status["last_error"] and status["last_failure"]
        out = pip_download(env, index, f"never-{unique}", tmp_path / "nope", check=False)
        assert "Successfully" not in out
    finally:
        up.start()
    # the upstream is back: a new release shows up once the backoff and expiry have passed
    up.publish(name, "2.0")
    deadline = time.monotonic() + 90
    versions: list[str] = []
    while time.monotonic() < deadline:
        r = simple_json(devpid_server, mirror, name)
        if r.ok:
            versions = r.json()["versions"]
            if "2.0" in versions:
                break
        time.sleep(0.5)
    assert "2.0" in versions
    status = devpid_server.json("GET", "/+status").json()["result"]["mirrors"][mirror]
    assert status["in_backoff"] is False


def test_hanging_upstream_never_delays_a_cached_page(
    devpid_server: Devpid, up: FakePyPI, mirror: str, unique: str
) -> None:
    name = f"hang-{unique}"
    up.publish(name, "1.0")
    assert simple_json(devpid_server, mirror, name).ok
    time.sleep(1.2)  # stale now
    up.mode = "hang"
    try:
        # the server's upstream timeout is 3 s; the cached page must come well before it
        r = simple_json(devpid_server, mirror, name, timeout=2.5)
        assert r.ok and r.json()["files"]
        r = simple_json(devpid_server, mirror, f"hang-new-{unique}", timeout=15)
        assert r.status_code in (502, 503, 504)
    finally:
        up.mode = "ok"


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_upstream_file_is_never_cached(
    devpid_server: Devpid, up: FakePyPI, mirror: str, unique: str, fault: str
) -> None:
    name = f"bad-{fault}-{unique}"
    path = up.publish(name, "1.0", extra_bytes=300_000)
    page = simple_json(devpid_server, mirror, name).json()
    url = f"{devpid_server.url}/{mirror}/+simple/{name}/" + page["files"][0]["url"]
    getattr(up, fault)(path.name)
    with pytest.raises(requests.exceptions.RequestException):
        r = requests.get(url, timeout=10)
        r.raise_for_status()
        if len(r.content) == path.stat().st_size and r.content == path.read_bytes():
            pytest.fail("a faulty upstream file was delivered as good")
        raise requests.exceptions.ContentDecodingError("short or wrong body")
    up.clear_faults()
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == path.read_bytes()
    # and now it is cached: served without asking the upstream
    before = up.count(f"/files/{path.name}")
    r = requests.get(url, timeout=10)
    assert r.content == path.read_bytes()
    assert up.count(f"/files/{path.name}") == before


def test_concurrent_first_requests_share_one_download(
    devpid_server: Devpid, up: FakePyPI, mirror: str, unique: str
) -> None:
    name = f"big-{unique}"
    path = up.publish(name, "1.0", extra_bytes=6_000_000)
    page = simple_json(devpid_server, mirror, name).json()
    url = f"{devpid_server.url}/{mirror}/+simple/{name}/" + page["files"][0]["url"]
    up.slow_rate = 4 * 1024 * 1024
    up.mode = "slow"
    expected = path.read_bytes()
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(lambda _: requests.get(url, timeout=60).content, range(20)))
    finally:
        up.mode = "ok"
    assert all(b == expected for b in bodies)
    assert up.count(f"/files/{path.name}") == 1


def test_download_completes_when_client_leaves(
    devpid_server: Devpid, up: FakePyPI, mirror: str, unique: str
) -> None:
    name = f"abandon-{unique}"
    path = up.publish(name, "1.0", extra_bytes=2_000_000)
    page = simple_json(devpid_server, mirror, name).json()
    url = f"{devpid_server.url}/{mirror}/+simple/{name}/" + page["files"][0]["url"]
    with requests.get(url, stream=True, timeout=10) as r:
        next(r.iter_content(1024))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = devpid_server.json("GET", f"/{mirror}/{name}/1.0")
        links = info.json().get("result", {}).get("+links", []) if info.ok else []
        stored = requests.get(url, headers={"Accept": "application/json"})
        if stored.ok and stored.headers["Content-Type"] == "application/json":
            break
        time.sleep(0.2)
    assert links
    assert up.count(f"/files/{path.name}") == 1
    assert requests.get(url).content == path.read_bytes()
    assert up.count(f"/files/{path.name}") == 1


def test_yanked_and_exclude_newer_through_the_mirror(
    devpid_server: Devpid, up: FakePyPI, mirror: str, env: dict[str, str], tmp_path: Path,
    unique: str,
) -> None:
    import datetime as dt

    name = f"timed-{unique}"
    old = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    new = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    up.publish(name, "1.0", upload_time=old)
    wheel = up.publish(name, "2.0", upload_time=new)
    up.publish(name, "1.5", upload_time=old)
    index = f"{devpid_server.url}/{mirror}/+simple/"
    proc = run([tool("uv"), "pip", "install", "--target", str(tmp_path / "t"), "--index-url",
                index, "--exclude-newer", "2025-01-01T00:00:00Z", name], env)
    assert "==1.5" in proc.stdout + proc.stderr
    up.yank(f"{name.replace('-', '_')}-1.5-py3-none-any.whl", "broken")
    time.sleep(1.2)
    page = simple_json(devpid_server, mirror, name).json()
    yanked = {f["filename"]: f.get("yanked") for f in page["files"]}
    assert yanked[f"{name.replace('-', '_')}-1.5-py3-none-any.whl"] == "broken"
    html = requests.get(f"{devpid_server.url}/{mirror}/+simple/{name}/").text
    assert 'data-yanked="broken"' in html
    out = pip_download(env, index, name, tmp_path / "y")
    assert wheel.name in out or "2.0" in out


def test_private_project_shadows_mirror_unless_whitelisted(
    devpid_server: Devpid, up: FakePyPI, mirror: str, alice: tuple[str, str],
    tmp_path: Path, env: dict[str, str], unique: str,
) -> None:
    from tests.support.pkgbuild import make_wheel

    user, pw = alice
    name = f"confused-{unique}"
    up.publish(name, "99.0")
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice,
                              json={"bases": mirror}).ok
    # before a private upload, the mirror's release is served through the stage
    page = simple_json(devpid_server, f"{user}/dev", name).json()
    assert page["versions"] == ["99.0"]
    wheel = make_wheel(tmp_path, name, "1.0")
    run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/dev/",
         "-u", user, "-p", pw, str(wheel)], env)
    before = up.count(f"/simple/{name}/")
    page = simple_json(devpid_server, f"{user}/dev", name).json()
    assert page["versions"] == ["1.0"]
    assert up.count(f"/simple/{name}/") == before  # the mirror was not even asked
    assert "mirror_whitelist" in requests.get(
        f"{devpid_server.url}/{user}/dev/+simple/{name}/").text
    assert devpid_server.json("PATCH", f"/{user}/dev", auth=alice,
                              json=[f"mirror_whitelist={name}"]).ok
    page = simple_json(devpid_server, f"{user}/dev", name).json()
    assert page["versions"] == ["1.0", "99.0"]


def test_mirror_failure_does_not_hide_private_releases(
    devpid_server: Devpid, alice: tuple[str, str], tmp_path: Path, env: dict[str, str],
    unique: str,
) -> None:
    """seed issue353: a broken mirror base means no mirror releases, not an error."""
    from tests.support.pkgbuild import make_wheel

    user, pw = alice
    dead = f"{user}/dead"
    assert devpid_server.json("PUT", f"/{dead}", auth=ROOT, json={
        "type": "mirror", "mirror_url": "http://127.0.0.1:9/simple/"}).ok
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={"bases": dead}).ok
    name = f"private-{unique}"
    wheel = make_wheel(tmp_path, name, "1.0")
    run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/dev/",
         "-u", user, "-p", pw, str(wheel)], env)
    r = simple_json(devpid_server, f"{user}/dev", name, timeout=10)
    assert r.ok and r.json()["versions"] == ["1.0"]
    r = simple_json(devpid_server, dead, name, timeout=10)
    assert r.status_code == 502 and "127.0.0.1:9" in r.json()["message"]


def test_offline_mode_never_contacts_upstream(start_devpid, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              env: dict[str, str]) -> None:
    fake = FakePyPI(tmp_path / "up")
    fake.start()
    try:
        fake.publish("offpkg", "1.0")
        fake.publish("offpkg", "2.0")
        fake.publish("other", "1.0")
        server: Devpid = start_devpid(upstream_url=fake.url)
        index = server.url + "/root/pypi/+simple/"
        pip_download(env, index, "offpkg==1.0", tmp_path / "d1")
        assert simple_json(server, "root/pypi", "offpkg").ok
        server.stop()
        server.args = ["--offline-mode"]
        server.start()
        fake.reset_log()
        page = simple_json(server, "root/pypi", "offpkg").json()
        assert [f["filename"] for f in page["files"]] == ["offpkg-1.0-py3-none-any.whl"]
        out = pip_download(env, index, "offpkg", tmp_path / "d2")
        assert "offpkg-1.0" in out
        r = simple_json(server, "root/pypi", "other", timeout=5)
        assert r.status_code == 503 and "offline" in r.json()["message"]
        assert fake.requests == []
        status = server.json("GET", "/+status").json()["result"]
        assert status["offline-mode"] is True
    finally:
        fake.close()


def test_refresh_and_status_json_shapes(devpid_server: Devpid, up: FakePyPI, mirror: str,
                                        unique: str) -> None:
    name = f"st-{unique}"
    up.publish(name, "1.0")
    assert simple_json(devpid_server, mirror, name).ok
    status = devpid_server.json("GET", "/+status").json()["result"]
    info = status["mirrors"][mirror]
    assert info["url"] == up.url and "in_backoff" in info and info["last_success"]
    json.dumps(status)
    r = requests.get(f"{devpid_server.url}/{mirror}/+simple/{name.upper()}/",
                     allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"].endswith(f"/+simple/{name}/")
    assert devpid_server.login("root", ROOT_PASSWORD)


def test_big_project_list_is_served_compressed(start_devpid, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = FakePyPI(tmp_path / "up", extra_project_names=50_000)
    fake.start()
    try:
        fake.publish("listed", "1.0")
        server: Devpid = start_devpid(upstream_url=fake.url)
        r = requests.get(server.url + "/root/pypi/+simple/", headers={"Accept": JSON_ACCEPT},
                         timeout=60)
        assert r.ok
        names = [p["name"] for p in r.json()["projects"]]
        assert len(names) >= 50_001 and "listed" in names
        etag = r.headers["ETag"]
        assert r.headers.get("Content-Encoding") == "gzip"  # requests sends Accept-Encoding
        r2 = requests.get(server.url + "/root/pypi/+simple/",
                          headers={"Accept": JSON_ACCEPT, "If-None-Match": etag})
        assert r2.status_code == 304
        plain = requests.get(server.url + "/root/pypi/+simple/",
                             headers={"Accept-Encoding": "identity"})
        assert plain.ok and "Content-Encoding" not in plain.headers
        assert '<a href="listed/">listed</a>' in plain.text
        # a project page never depends on the list: a brand-new project installs at once
        fake.publish("brand-new", "1.0")
        assert simple_json(server, "root/pypi", "brand-new").ok
        # the list is fetched once, not per request
        assert fake.count("/simple/") - sum(
            1 for _, path, _ in fake.requests if path.startswith("/simple/") and path != "/simple/"
        ) == 1
    finally:
        fake.close()


def test_no_project_list_option_and_refresh(devpid_server: Devpid, up: FakePyPI,
                                            alice: tuple[str, str], unique: str) -> None:
    user, _ = alice
    stage = f"{user}/nolist"
    assert devpid_server.json("PUT", f"/{stage}", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url, "mirror_no_project_list": True,
        "mirror_cache_expiry": 3600}).ok
    name = f"nl-{unique}"
    up.publish(name, "1.0")
    assert simple_json(devpid_server, stage, name).ok
    before = up.count("/simple/")
    listing = requests.get(f"{devpid_server.url}/{stage}/+simple/",
                           headers={"Accept": JSON_ACCEPT}).json()
    assert [p["name"] for p in listing["projects"]] == [name]
    assert up.count("/simple/") == before  # the upstream list was never asked for
    up.publish(name, "2.0")
    assert simple_json(devpid_server, stage, name).json()["versions"] == ["1.0"]  # cached
    r = requests.post(f"{devpid_server.url}/{stage}/+simple/{name}/refresh")
    assert r.ok and r.json()["versions"] == ["1.0", "2.0"] if "json" in r.headers[
        "Content-Type"] else "2.0" in r.text
