"""Issue 3 end to end: private indexes driven by real clients (twine, uv, devpi, pip).

Distributions are built once per module; one index is populated once (by all three upload
clients) and then read by pip and uv. Tests that change state (yank, delete, push,
inheritance) get their own user on the session daemon.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Devpid, client_env, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import dist_name, make_sdist, make_wheel

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PIP_UA = {"User-Agent": "pip/23.0 CPython/3.11"}


# -- helpers shared with test_simple_api / test_upload_refusals ---------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_user(server: Devpid, name: str | None = None, password: str = "pw") -> tuple[str, str]:
    name = name or f"u{uuid.uuid4().hex[:10]}"
    r = server.json("PUT", f"/{name}", json={"password": password})
    assert r.status_code == 201, r.text
    return name, password


def make_index(server: Devpid, auth: tuple[str, str], index: str, **config: Any) -> str:
    """Create ``user/index`` (config values as JSON) and return the stage name."""
    stage = f"{auth[0]}/{index}"
    r = server.json("PUT", f"/{stage}", auth=auth, json=config)
    assert r.status_code == 200, r.text
    return stage


def http_upload(
    server: Devpid,
    auth: tuple[str, str] | None,
    stage: str,
    path: Path | None,
    *,
    name: str | None = None,
    version: str | None = None,
    filename: str | None = None,
    content: bytes | None = None,
    action: str = "file_upload",
    extra: dict[str, str] | None = None,
) -> requests.Response:
    """A multipart upload as twine sends it (fields + ``content``), built with requests."""
    data = content if content is not None else (path.read_bytes() if path else b"")
    fname = filename or (path.name if path else "file")
    fields: dict[str, str] = {":action": action, "protocol_version": "1"}
    if name is not None:
        fields["name"] = name
    if version is not None:
        fields["version"] = version
    if action == "file_upload":
        fields["sha256_digest"] = hashlib.sha256(data).hexdigest()
        fields["filetype"] = "bdist_wheel" if fname.endswith(".whl") else "sdist"
        fields["pyversion"] = "py3" if fname.endswith(".whl") else "source"
        fields["metadata_version"] = "2.1"
    fields.update(extra or {})
    return requests.post(
        f"{server.url}/{stage}/",
        data=fields,
        files={"content": (fname, io.BytesIO(data), "application/octet-stream")},
        auth=auth,
        headers={"Accept": "application/json"},
        timeout=30,
    )


def upload_ok(server: Devpid, auth: tuple[str, str], stage: str, path: Path, name: str,
              version: str) -> None:
    r = http_upload(server, auth, stage, path, name=name, version=version)
    assert r.status_code == 200, r.text


def simple_json(server: Devpid, stage: str, project: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/{stage}/+simple/{project}/", headers={"Accept": SIMPLE_JSON},
                     timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == SIMPLE_JSON
    data: dict[str, Any] = r.json()
    return data


def filenames(server: Devpid, stage: str, project: str) -> list[str]:
    return sorted(f["filename"] for f in simple_json(server, stage, project)["files"])


def make_doczip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def pip_download(
    env: dict[str, str], index_url: str, *reqs: str, extra: tuple[str, ...] = (),
    check: bool = True,
) -> tuple[list[str], str]:
    """``pip download --no-deps``; returns (downloaded file names, pip's output)."""
    dest = Path(tempfile.mkdtemp(prefix="dl-", dir=env["HOME"]))
    proc = run(
        [tool("pip"), "download", "--no-deps", "-d", str(dest), "--index-url", index_url,
         *extra, *reqs],
        env, check=check,
    )
    return sorted(p.name for p in dest.iterdir()), proc.stdout + proc.stderr


def uv_install(
    env: dict[str, str], index_url: str, *reqs: str, extra: tuple[str, ...] = (),
    check: bool = True,
) -> tuple[list[str], str]:
    """``uv pip install --target``; returns (installed dist-info names, uv's output)."""
    target = Path(tempfile.mkdtemp(prefix="uv-", dir=env["HOME"]))
    proc = run(
        [tool("uv"), "pip", "install", "--no-deps", "--target", str(target),
         "--python", sys.executable, "--index-url", index_url, *extra, *reqs],
        env, check=check,
    )
    return sorted(p.name for p in target.glob("*.dist-info")), proc.stdout + proc.stderr


def devpi(env: dict[str, str], *args: str, check: bool = True) -> str:
    proc = run([tool("devpi"), *args], env, check=check)
    return proc.stdout + proc.stderr


# -- the module's distributions and the index populated by three clients ------------------------
GREET = "Greet.Pkg"  # normalises to greet-pkg
OTHER = "other_lib"  # normalises to other-lib
THIRD = "third-pkg"


@dataclass
class Dists:
    root: Path
    greet: list[Path]
    other: list[Path]
    third: Path  # a directory for devpi upload --from-dir
    third_doc: Path

    def by_name(self, filename: str) -> Path:
        for path in [*self.greet, *self.other, *self.third.iterdir()]:
            if path.name == filename:
                return path
        raise KeyError(filename)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    root = tmp_path_factory.mktemp("dists")
    greet_dir, other_dir, third_dir = root / "greet", root / "other", root / "third"
    greet = [
        make_wheel(greet_dir, GREET, "1.0"),
        make_sdist(greet_dir, GREET, "1.0"),
        make_wheel(greet_dir, GREET, "1.1", summary="the latest stable"),
        make_sdist(greet_dir, GREET, "1.1", summary="the latest stable"),
        make_wheel(greet_dir, GREET, "2.0rc1"),
        make_wheel(greet_dir, GREET, "3.0", requires_python=">=3.99"),
        make_sdist(greet_dir, GREET, "3.0", requires_python=">=3.99"),
    ]
    other = [make_wheel(other_dir, OTHER, "0.1"), make_wheel(other_dir, OTHER, "0.2")]
    make_wheel(third_dir, THIRD, "1.0")
    make_sdist(third_dir, THIRD, "1.0")
    doc = make_doczip(root / "docs" / f"{THIRD}-1.0.doc.zip", {
        "index.html": b"<html><body>third-pkg docs</body></html>",
        "api/index.html": b"<html>api</html>",
    })
    return Dists(root, greet, other, third_dir, doc)


@dataclass
class Populated:
    server: Devpid
    auth: tuple[str, str]
    stage: str
    env: dict[str, str]
    twine_out: str
    uv_out: str
    devpi_out: str

    @property
    def simple(self) -> str:
        return f"{self.server.url}/{self.stage}/+simple/"


@pytest.fixture(scope="module")
def populated(
    devpid_server: Devpid, dists: Dists, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Populated]:
    """alice/dev filled by twine (greet), uv publish (other-lib) and devpi upload (third)."""
    env = client_env(tmp_path_factory.mktemp("client"))
    auth = make_user(devpid_server, f"alice{uuid.uuid4().hex[:8]}", "alice-pw")
    stage = make_index(devpid_server, auth, "dev")
    url = f"{devpid_server.url}/{stage}/"
    twine = run(
        [tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
         "--repository-url", url, "-u", auth[0], "-p", auth[1], *map(str, dists.greet)],
        env,
    )
    uv = run(
        [tool("uv"), "publish", "--publish-url", url, "--username", auth[0],
         "--password", auth[1], *map(str, dists.other)],
        env,
    )
    devpi(env, "use", devpid_server.url + "/")
    devpi(env, "login", auth[0], "--password", auth[1])
    devpi(env, "use", stage)
    out = devpi(env, "upload", "--from-dir", str(dists.third))
    out += devpi(env, "upload", str(dists.third_doc))
    yield Populated(devpid_server, auth, stage, env, twine.stdout + twine.stderr,
                    uv.stdout + uv.stderr, out)


def test_three_clients_uploaded_everything(populated: Populated, dists: Dists) -> None:
    server, stage = populated.server, populated.stage
    r = requests.get(populated.simple, headers={"Accept": SIMPLE_JSON}, timeout=30)
    assert r.status_code == 200
    names = {p["name"] for p in r.json()["projects"]}
    assert {"greet-pkg", "other-lib", "third-pkg"} <= names
    assert filenames(server, stage, "greet-pkg") == sorted(p.name for p in dists.greet)
    assert filenames(server, stage, "other-lib") == sorted(p.name for p in dists.other)
    assert filenames(server, stage, "third-pkg") == sorted(p.name for p in dists.third.iterdir())
    # every stored file is byte-identical to what was uploaded
    for project in ("greet-pkg", "other-lib", "third-pkg"):
        for f in simple_json(server, stage, project)["files"]:
            assert f["hashes"]["sha256"] == sha256_file(dists.by_name(f["filename"]))
    # release metadata came from the archives: summary, requires_python
    r = server.json("GET", f"/{stage}/greet-pkg/1.1")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["summary"] == "the latest stable"
    r = server.json("GET", f"/{stage}/greet-pkg/3.0")
    assert r.json()["result"]["requires_python"] == ">=3.99"
    # upload log names the uploader
    links = r.json()["result"]["+links"]
    assert {link["log"][0]["who"] for link in links} == {populated.auth[0]}


def test_devpi_list_and_docs(populated: Populated) -> None:
    out = devpi(populated.env, "list")
    for name in ("greet-pkg", "other-lib", "third-pkg"):
        assert name in out, out
    out = devpi(populated.env, "list", "greet-pkg")
    assert f"{populated.stage}/+f/" in out and "greet_pkg-1.1-py3-none-any.whl" in out, out
    # docs uploaded by devpi upload name-version.doc.zip are served out of the zip
    base = f"{populated.server.url}/{populated.stage}/third-pkg/1.0/+doc/"
    r = requests.get(base + "index.html", timeout=30)
    assert r.status_code == 200 and b"third-pkg docs" in r.content
    assert r.headers["Content-Type"].startswith("text/html")
    assert requests.get(base + "api/", timeout=30).content == b"<html>api</html>"
    assert requests.get(base + "missing.html", timeout=30).status_code == 404
    assert requests.get(base + "../../../../../etc/passwd", timeout=30).status_code == 404
    r = populated.server.json("GET", f"/{populated.stage}/third-pkg/1.0")
    rels = sorted(link["rel"] for link in r.json()["result"]["+links"])
    assert rels == ["doczip", "releasefile", "releasefile"]


def test_pip_chooses_latest_stable_and_honours_requires_python(populated: Populated) -> None:
    env, index = populated.env, populated.simple
    got, out = pip_download(env, index, "greet-pkg")
    assert got == ["greet_pkg-1.1-py3-none-any.whl"], out
    # PEP 658: pip resolved from the .metadata file instead of downloading first
    assert "greet_pkg-1.1-py3-none-any.whl.metadata" in out, out
    got, _ = pip_download(env, index, "greet-pkg", extra=("--pre",))
    assert got == ["greet_pkg-2.0rc1-py3-none-any.whl"]
    got, _ = pip_download(env, index, "Greet_Pkg<1.1")
    assert got == ["greet_pkg-1.0-py3-none-any.whl"]
    # the index URL itself works as an index for pip (installer shortcut /u/i/p/)
    got, _ = pip_download(env, f"{populated.server.url}/{populated.stage}/", "greet-pkg")
    assert got == ["greet_pkg-1.1-py3-none-any.whl"]
    got, out = pip_download(env, index, "greet-pkg==3.0", check=False)
    assert got == [] and "3.0" in out and "Requires-Python" in out, out
    # pip install into a target dir works too
    target = Path(tempfile.mkdtemp(prefix="t-", dir=env["HOME"]))
    run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url", index,
         "other-lib", THIRD], env)
    installed = sorted(p.name for p in target.glob("*.dist-info"))
    assert installed == ["other_lib-0.2.dist-info", "third_pkg-1.0.dist-info"]
    assert (target / "other_lib" / "__init__.py").read_text().count('"0.2"') == 1


def test_pip_require_hashes(populated: Populated, dists: Dists) -> None:
    env, index = populated.env, populated.simple
    wheel = dists.by_name("greet_pkg-1.1-py3-none-any.whl")
    req = Path(env["HOME"]) / "req.txt"
    req.write_text(f"greet-pkg==1.1 --hash=sha256:{sha256_file(wheel)}\n")
    got, _ = pip_download(env, index, "-r", str(req), extra=("--require-hashes",))
    assert got == [wheel.name]
    req.write_text(f"greet-pkg==1.1 --hash=sha256:{'0' * 64}\n")
    got, out = pip_download(env, index, "-r", str(req), extra=("--require-hashes",), check=False)
    assert got == [] and "DO NOT MATCH THE HASHES" in out, out


def test_uv_chooses_latest_stable_and_honours_requires_python(populated: Populated) -> None:
    env, index = populated.env, populated.simple
    got, out = uv_install(env, index, "greet-pkg")
    assert got == ["greet_pkg-1.1.dist-info"], out
    got, _ = uv_install(env, index, "greet-pkg", extra=("--prerelease", "allow"))
    assert got == ["greet_pkg-2.0rc1.dist-info"]
    got, _ = uv_install(env, index, "greet-pkg==1.0", "other-lib<0.2", THIRD)
    assert got == ["greet_pkg-1.0.dist-info", "other_lib-0.1.dist-info", "third_pkg-1.0.dist-info"]
    got, out = uv_install(env, index, "greet-pkg==3.0", check=False)
    assert got == [] and "3.99" in out, out


def _access_log(server: Devpid, stage: str, wanted: str, timeout: float = 10.0) -> list[str]:
    """The daemon's access-log lines about ``stage`` once ``wanted`` shows up (logs lag)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log().splitlines() if f" /{stage}/" in line]
        if any(wanted in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_uv_uses_pep691_json_and_pep658_metadata(
    devpid_server: Devpid, alice: tuple[str, str], dists: Dists, env: dict[str, str]
) -> None:
    """uv resolves from the JSON page and the .metadata files (seen in the access log)."""
    server = devpid_server
    stage = make_index(server, alice, "uv")
    for path in dists.other:
        upload_ok(server, alice, stage, path, OTHER, path.name.split("-")[1])
    req = Path(env["HOME"]) / "req.in"
    req.write_text("other-lib\n")
    proc = run([tool("uv"), "pip", "compile", str(req), "--python", sys.executable,
                "--index-url", f"{server.url}/{stage}/+simple/", "--no-header"], env)
    assert "other-lib==0.2" in proc.stdout, proc.stdout
    lines = _access_log(server, stage, "whl.metadata")
    log = "\n".join(lines)
    assert f"GET /{stage}/+simple/other-lib/ 200" in log, log
    assert "other_lib-0.2-py3-none-any.whl.metadata 200" in log, log
    # resolving needed no distribution file at all
    assert ".whl 200" not in log, log


# -- yanking ------------------------------------------------------------------------------------
def test_yank_and_unyank(devpid_server: Devpid, alice: tuple[str, str], dists: Dists,
                         env: dict[str, str]) -> None:
    server = devpid_server
    stage = make_index(server, alice, "dev")
    for v in ("1.0", "1.1"):
        upload_ok(server, alice, stage, dists.by_name(f"greet_pkg-{v}-py3-none-any.whl"), GREET, v)
    index = f"{server.url}/{stage}/+simple/"
    yank_url = f"/{stage}/greet-pkg/1.1/+yank"
    # anonymous: 401; another user: 403; nothing changes
    assert server.json("POST", yank_url, json={"reason": "x"}).status_code == 401
    bob = make_user(server)
    assert server.json("POST", yank_url, auth=bob, json={"reason": "x"}).status_code == 403
    assert not any(f.get("yanked") for f in simple_json(server, stage, "greet-pkg")["files"])

    r = server.json("POST", yank_url, auth=alice, json={"reason": 'broken <b>"build"</b>'})
    assert r.status_code == 200, r.text
    files = {f["filename"]: f for f in simple_json(server, stage, "greet-pkg")["files"]}
    assert files["greet_pkg-1.1-py3-none-any.whl"]["yanked"] == 'broken <b>"build"</b>'
    assert "yanked" not in files["greet_pkg-1.0-py3-none-any.whl"]
    page = requests.get(f"{index}greet-pkg/", timeout=30).text
    assert 'data-yanked="broken &lt;b&gt;&quot;build&quot;&lt;/b&gt;"' in page, page

    assert pip_download(env, index, "greet-pkg")[0] == ["greet_pkg-1.0-py3-none-any.whl"]
    assert pip_download(env, index, "greet-pkg==1.1")[0] == ["greet_pkg-1.1-py3-none-any.whl"]
    assert uv_install(env, index, "greet-pkg")[0] == ["greet_pkg-1.0.dist-info"]
    assert uv_install(env, index, "greet-pkg==1.1")[0] == ["greet_pkg-1.1.dist-info"]

    # a yank without a reason is plain "true" (HTML: data-yanked="")
    assert server.json("POST", f"/{stage}/greet-pkg/1.0/+yank", auth=alice).status_code == 200
    files = {f["filename"]: f for f in simple_json(server, stage, "greet-pkg")["files"]}
    assert files["greet_pkg-1.0-py3-none-any.whl"]["yanked"] is True
    assert 'data-yanked=""' in requests.get(f"{index}greet-pkg/", timeout=30).text

    for v in ("1.0", "1.1"):
        r = server.json("POST", f"/{stage}/greet-pkg/{v}/+unyank", auth=alice)
        assert r.status_code == 200, r.text
    assert not any(f.get("yanked") for f in simple_json(server, stage, "greet-pkg")["files"])
    assert uv_install(env, index, "greet-pkg")[0] == ["greet_pkg-1.1.dist-info"]
    assert server.json("POST", f"/{stage}/greet-pkg/9.9/+yank", auth=alice).status_code == 404


# -- deletion and push --------------------------------------------------------------------------
def test_delete_file_version_project_on_volatile(
    devpid_server: Devpid, alice: tuple[str, str], dists: Dists
) -> None:
    server = devpid_server
    stage = make_index(server, alice, "dev")
    for path in dists.greet[:4]:  # 1.0 and 1.1, wheel and sdist each
        version = "1.0" if "1.0" in path.name else "1.1"
        upload_ok(server, alice, stage, path, GREET, version)
    files = {f["filename"]: f for f in simple_json(server, stage, "greet-pkg")["files"]}
    wheel = files["greet_pkg-1.0-py3-none-any.whl"]
    path = wheel["url"].split("../")[-1]  # "{stage}/+f/..."
    assert server.json("DELETE", f"/{path}").status_code == 401
    r = server.json("DELETE", f"/{path}", auth=alice)
    assert r.status_code == 200, r.text
    assert requests.get(f"{server.url}/{path}", timeout=30).status_code in (404, 410)
    assert "greet_pkg-1.0-py3-none-any.whl" not in filenames(server, stage, "greet-pkg")
    # the last file of 1.0 takes the version with it
    sdist = files["Greet.Pkg-1.0.tar.gz"]["url"].split("../")[-1]
    assert server.json("DELETE", f"/{sdist}", auth=alice).status_code == 200
    assert server.json("GET", f"/{stage}/greet-pkg/1.0").status_code == 404
    # delete a version, then the project
    assert server.json("DELETE", f"/{stage}/greet-pkg/1.1", auth=alice).status_code == 200
    r = requests.get(f"{server.url}/{stage}/+simple/greet-pkg/", timeout=30)
    assert r.status_code == 404
    upload_ok(server, alice, stage, dists.greet[0], GREET, "1.0")
    assert server.json("DELETE", f"/{stage}/Greet.Pkg", auth=alice).status_code == 200
    assert requests.get(f"{server.url}/{stage}/+simple/greet-pkg/", timeout=30).status_code == 404
    r = requests.get(f"{server.url}/{stage}/+simple/", headers={"Accept": SIMPLE_JSON},
                     timeout=30)
    assert r.json()["projects"] == []


def test_devpi_remove_push_and_non_volatile_force(
    devpid_server: Devpid, alice: tuple[str, str], dists: Dists, env: dict[str, str]
) -> None:
    server = devpid_server
    stage = make_index(server, alice, "dev")
    prod = make_index(server, alice, "prod", volatile=False)
    devpi(env, "use", server.url + "/")
    devpi(env, "login", alice[0], "--password", alice[1])
    devpi(env, "use", stage)
    devpi(env, "upload", *map(str, dists.greet[:4]))
    assert len(filenames(server, stage, "greet-pkg")) == 4

    out = devpi(env, "push", "greet-pkg==1.0", prod)
    assert "store_releasefile" in out, out
    out = devpi(env, "push", "greet-pkg==1.1", prod)
    assert sorted(filenames(server, prod, "greet-pkg")) == sorted(
        p.name for p in dists.greet[:4]
    ), out
    # pushed files keep their bytes and get a push log entry
    data = server.json("GET", f"/{prod}/greet-pkg/1.0").json()["result"]
    assert [e["what"] for e in data["+links"][0]["log"]] == ["upload", "push"]
    for f in simple_json(server, prod, "greet-pkg")["files"]:
        assert f["hashes"]["sha256"] == sha256_file(dists.by_name(f["filename"]))
    got, _ = pip_download(env, f"{server.url}/{prod}/+simple/", "greet-pkg==1.0")
    assert got == ["greet_pkg-1.0-py3-none-any.whl"]
    # pushing into somebody else's index is refused
    bob = make_user(server)
    bobs = make_index(server, bob, "dev")
    out = devpi(env, "push", "greet-pkg==1.0", bobs, check=False)
    assert "401" in out and "cannot upload" in out, out
    assert requests.get(f"{server.url}/{bobs}/+simple/greet-pkg/", timeout=30).status_code == 404
    # pushing again into the non-volatile index conflicts
    out = devpi(env, "push", "greet-pkg==1.0", prod, check=False)
    assert "409" in out or "already exists" in out, out

    out = devpi(env, "remove", "-y", "greet-pkg==1.0")
    assert "1.0" not in " ".join(filenames(server, stage, "greet-pkg")), out
    assert filenames(server, stage, "greet-pkg") == ["Greet.Pkg-1.1.tar.gz",
                                                     "greet_pkg-1.1-py3-none-any.whl"]

    # non-volatile: deletion needs ?force
    r = server.json("DELETE", f"/{prod}/greet-pkg/1.0", auth=alice)
    assert r.status_code == 403, r.text
    assert "non-volatile" in r.json()["message"]
    assert server.json("DELETE", f"/{prod}/greet-pkg", auth=alice).status_code == 403
    assert len(filenames(server, prod, "greet-pkg")) == 4
    out = devpi(env, "remove", "-y", "--index", prod, "greet-pkg==1.0", check=False)
    assert len(filenames(server, prod, "greet-pkg")) == 4, out
    devpi(env, "remove", "-y", "--force", "--index", prod, "greet-pkg==1.0")
    assert filenames(server, prod, "greet-pkg") == ["Greet.Pkg-1.1.tar.gz",
                                                    "greet_pkg-1.1-py3-none-any.whl"]
    assert server.json("DELETE", f"/{prod}/greet-pkg?force", auth=alice).status_code == 200
    assert requests.get(f"{server.url}/{prod}/+simple/greet-pkg/", timeout=30).status_code == 404


# -- inheritance --------------------------------------------------------------------------------
def _mirror_serves(server: Devpid, project: str) -> bool:
    r = requests.get(f"{server.url}/root/pypi/+simple/{project}/",
                     headers={"Accept": SIMPLE_JSON}, timeout=30)
    return r.status_code == 200 and bool(r.json().get("files"))


def test_inheritance_depth_first_and_private_first(
    devpid_server: Devpid, alice: tuple[str, str], upstream: FakePyPI, unique: str,
    tmp_path: Path, env: dict[str, str],
) -> None:
    server = devpid_server
    shared, mirror_only = f"shared-{unique}", f"mirroronly-{unique}"
    upstream.publish(shared, "9.0")
    upstream.publish(mirror_only, "1.0")

    b3 = make_index(server, alice, "b3")
    b2 = make_index(server, alice, "b2")
    b1 = make_index(server, alice, "b1", bases=[b3])
    base = make_index(server, alice, "base")
    dev = make_index(server, alice, "dev", bases=[b1, b2, base, "root/pypi"])

    # the same file name in b3 and b2 with different bytes: depth-first means b3 wins
    in_b3 = make_wheel(tmp_path / "b3", "order-pkg", "1.0", summary="from b3")
    in_b2 = make_wheel(tmp_path / "b2", "order-pkg", "1.0", summary="from b2")
    assert sha256_file(in_b3) != sha256_file(in_b2)
    upload_ok(server, alice, b3, in_b3, "order-pkg", "1.0")
    upload_ok(server, alice, b2, in_b2, "order-pkg", "1.0")
    page = simple_json(server, dev, "order-pkg")
    assert [f["hashes"]["sha256"] for f in page["files"]] == [sha256_file(in_b3)]
    assert f"/{b3}/+f/" in requests.compat.urljoin(
        f"{server.url}/{dev}/+simple/order-pkg/", page["files"][0]["url"])
    data = server.json("GET", f"/{dev}/order-pkg/1.0").json()["result"]
    assert data["summary"] == "from b3"
    assert [s["summary"] for s in data["+shadowing"]] == ["from b2"]

    # releases are merged: 1.0 in dev, 0.5 in base; dev wins for the latest
    upload_ok(server, alice, base, make_wheel(tmp_path / "base", GREET, "0.5"), GREET, "0.5")
    upload_ok(server, alice, dev, make_wheel(tmp_path / "dev", GREET, "1.0"), GREET, "1.0")
    upload_ok(server, alice, base, make_wheel(tmp_path / "base", shared, "0.1"), shared, "0.1")
    page = simple_json(server, dev, "greet-pkg")
    assert page["versions"] == ["0.5", "1.0"]
    index = f"{server.url}/{dev}/+simple/"
    assert uv_install(env, index, "greet-pkg")[0] == ["greet_pkg-1.0.dist-info"]
    assert uv_install(env, index, "greet-pkg<1")[0] == ["greet_pkg-0.5.dist-info"]
    html_page = requests.get(f"{index}greet-pkg/", timeout=30).text
    assert f"{dev} <a " in html_page and f"{base} <a " in html_page
    r = requests.get(index, headers={"Accept": SIMPLE_JSON}, timeout=30)
    names = [p["name"] for p in r.json()["projects"]]
    assert {"order-pkg", "greet-pkg", shared} <= set(names)

    # the private project named like the upstream one: only the private release is served
    assert [f["filename"] for f in simple_json(server, dev, shared)["files"]] == [
        f"{dist_name(shared)}-0.1-py3-none-any.whl"]
    assert "mirror_whitelist" in requests.get(f"{index}{shared}/", timeout=30).text
    assert uv_install(env, index, shared)[0] == [f"{dist_name(shared)}-0.1.dist-info"]
    # ... and the mirror was not even asked about private names (no dependency confusion leak)
    asked = [path for _, path, _ in upstream.requests]
    assert not [p for p in asked if shared in p or "order-pkg" in p], asked

    if not _mirror_serves(server, mirror_only):
        pytest.skip("mirror not implemented yet (root/pypi serves nothing)")
    assert uv_install(env, index, mirror_only)[0] == [f"{dist_name(mirror_only)}-1.0.dist-info"]
    r = server.json("PATCH", f"/{dev}", auth=alice, json=[f"mirror_whitelist+={shared}"])
    assert r.status_code == 200, r.text
    versions = simple_json(server, dev, shared)["versions"]
    assert versions == ["0.1", "9.0"]
    assert uv_install(env, index, shared)[0] == [f"{dist_name(shared)}-9.0.dist-info"]
