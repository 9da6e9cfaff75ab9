"""Refused uploads: a clear 4xx with a JSON message, and nothing stored.

"Nothing stored" is checked four ways: the index's project list, the project's simple page,
the daemon's X-Devpi-Serial and the files in its blob store are all unchanged after each
refusal.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Devpid, run, tool
from tests.support.pkgbuild import make_sdist, make_wheel
from tests.test_private_index import (
    SIMPLE_JSON,
    http_upload,
    make_doczip,
    make_index,
    make_user,
    upload_ok,
)

NAME = "refuse-pkg"


@dataclass
class Target:
    server: Devpid
    auth: tuple[str, str]
    stage: str  # non-volatile, holds refuse-pkg 1.0 (wheel)
    wheel: Path  # refuse-pkg 1.0 wheel (stored)
    wheel2: Path  # refuse-pkg 2.0 wheel (not stored)
    sdist: Path  # refuse-pkg 1.0 sdist (not stored)
    other: Path  # another project's wheel

    def state(self) -> tuple[Any, ...]:
        s = self.server
        lst = requests.get(f"{s.url}/{self.stage}/+simple/", headers={"Accept": SIMPLE_JSON},
                           timeout=30)
        page = requests.get(f"{s.url}/{self.stage}/+simple/{NAME}/",
                            headers={"Accept": SIMPLE_JSON}, timeout=30)
        serial = requests.get(f"{s.url}/+api", timeout=30).headers["X-Devpi-Serial"]
        projects = sorted(p["name"] for p in lst.json()["projects"])
        files = sorted((f["filename"], f["hashes"]["sha256"]) for f in page.json()["files"])
        versions = page.json()["versions"]
        blobs = sorted(str(p) for p in (s.serverdir / "+blobs").rglob("*") if p.is_file())
        return projects, files, versions, int(serial), blobs


@pytest.fixture(scope="module")
def target(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    d = tmp_path_factory.mktemp("refuse")
    auth = make_user(devpid_server, f"ref{uuid.uuid4().hex[:8]}")
    stage = make_index(devpid_server, auth, "prod", volatile=False)
    wheel = make_wheel(d, NAME, "1.0")
    upload_ok(devpid_server, auth, stage, wheel, NAME, "1.0")
    yield Target(devpid_server, auth, stage, wheel, make_wheel(d, NAME, "2.0"),
                 make_sdist(d, NAME, "1.0"), make_wheel(d, "other-pkg", "1.0"))


def assert_refused(r: requests.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json", r.headers
    message = r.json()["message"]
    assert fragment.lower() in message.lower(), message


def test_no_permission(target: Target, env: dict[str, str]) -> None:
    server = target.server
    bob = make_user(server)
    before = target.state()
    r = http_upload(server, None, target.stage, target.wheel2, name=NAME, version="2.0")
    assert_refused(r, 401, "authentication required")
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = http_upload(server, bob, target.stage, target.wheel2, name=NAME, version="2.0")
    assert_refused(r, 403, "no permission")
    r = http_upload(server, (target.auth[0], "wrong"), target.stage, target.wheel2, name=NAME,
                    version="2.0")
    assert_refused(r, 401, "could not be authenticated")
    # twine reports the refusal and fails
    proc = run(
        [tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
         "--repository-url", f"{server.url}/{target.stage}/", "-u", bob[0], "-p", bob[1],
         str(target.wheel2)],
        env, check=False,
    )
    assert proc.returncode != 0 and "403" in proc.stdout + proc.stderr
    # the mirror index takes no uploads
    r = http_upload(server, ("root", "root-secret"), "root/pypi", target.wheel2, name=NAME,
                    version="2.0")
    assert_refused(r, 404, "mirror")
    assert target.state() == before


def test_wrong_digests_and_bad_forms(target: Target) -> None:
    server, stage, auth, before = target.server, target.stage, target.auth, target.state()
    for field in ("sha256_digest", "md5_digest", "blake2_256_digest"):
        r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0",
                        extra={field: "0" * 64})
        assert_refused(r, 400, f"{field} does not match")
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0",
                    action="frobnicate")
    assert_refused(r, 400, "not supported")
    r = requests.post(f"{server.url}/{stage}/", data={"name": NAME}, auth=auth,
                      files={"content": ("x.whl", b"x")}, timeout=30)
    assert_refused(r, 400, ":action field not found")
    r = http_upload(server, auth, stage, None, name=NAME, version="2.0",
                    filename="refuse_pkg-2.0-py3-none-any.whl", content=b"")
    assert_refused(r, 400, "empty")
    r = http_upload(server, auth, stage, None, name=NAME, version="2.0",
                    filename="refuse_pkg-2.0-py3-none-any.whl", content=b"not a zip at all")
    assert_refused(r, 400, "invalid distribution")
    r = requests.post(f"{server.url}/{stage}/", auth=auth, timeout=30,
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                      data=b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nbroken")
    assert_refused(r, 400, "malformed")
    assert target.state() == before


def test_filename_must_match_name_and_version(target: Target) -> None:
    server, stage, auth, before = target.server, target.stage, target.auth, target.state()
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="3.0")
    assert_refused(r, 400, "does not contain version")
    r = http_upload(server, auth, stage, target.other, name=NAME, version="1.0")
    assert_refused(r, 400, "does not match project name")
    # the file's own metadata must agree with the form too
    renamed = target.wheel2.read_bytes()
    r = http_upload(server, auth, stage, None, name=NAME, version="3.0",
                    filename="refuse_pkg-3.0-py3-none-any.whl", content=renamed)
    assert_refused(r, 400, "metadata has version")
    r = http_upload(server, auth, stage, None, name=NAME, version="3.0",
                    filename="refuse-pkg-3.0.tar.gz", content=target.sdist.read_bytes())
    assert_refused(r, 400, "metadata has version")
    r = http_upload(server, auth, stage, None, name="other-pkg", version="2.0",
                    filename="other_pkg-2.0-py3-none-any.whl", content=renamed)
    assert_refused(r, 400, "metadata names project")
    r = http_upload(server, auth, stage, target.wheel2, name="bad name!", version="2.0")
    assert_refused(r, 400, "invalid")
    r = http_upload(server, auth, stage, target.wheel2, filename="refuse_pkg-2.0.exe.txt",
                    name=NAME, version="2.0")
    assert_refused(r, 400, "archive")
    assert target.state() == before


@pytest.mark.parametrize(
    ("filename", "fragment"),
    [
        ("../refuse-pkg-2.0.tar.gz", "path separators"),
        ("../../refuse-pkg-2.0.tar.gz", "path separators"),
        ("a/refuse-pkg-2.0.tar.gz", "path separators"),
        ("a/refuse_pkg-2.0-py3-none-any.whl", "path separators"),
        ("..\\refuse-pkg-2.0.tar.gz", "path separators"),
        ("/etc/refuse-pkg-2.0.tar.gz", "path separators"),
        (".refuse-pkg-2.0.tar.gz", "must not start with '.'"),
    ],
)
def test_path_traversal_in_filename(target: Target, filename: str, fragment: str) -> None:
    before = target.state()
    content = (target.wheel2 if filename.endswith(".whl") else target.sdist).read_bytes()
    r = http_upload(target.server, target.auth, target.stage, None, name=NAME, version="2.0",
                    filename=filename, content=content)
    assert_refused(r, 400, fragment)
    assert target.state() == before
    assert not (target.server.serverdir.parent / "refuse-pkg-2.0.tar.gz").exists()


def test_duplicate_on_non_volatile(target: Target) -> None:
    server, stage, auth = target.server, target.stage, target.auth
    before = target.state()
    # identical re-upload: accepted, nothing changes
    r = http_upload(server, auth, stage, target.wheel, name=NAME, version="1.0")
    assert r.status_code == 200, r.text
    assert target.state() == before
    # same name, different bytes: conflict
    changed = make_wheel(target.wheel.parent / "changed", NAME, "1.0", summary="changed")
    r = http_upload(server, auth, stage, changed, name=NAME, version="1.0")
    assert_refused(r, 409, "already exists")
    assert target.state() == before


def test_volatile_overwrite_is_logged(devpid_server: Devpid, alice: tuple[str, str],
                                      tmp_path: Path) -> None:
    stage = make_index(devpid_server, alice, "dev")
    first = make_wheel(tmp_path / "a", NAME, "1.0", summary="first")
    second = make_wheel(tmp_path / "b", NAME, "1.0", summary="second")
    upload_ok(devpid_server, alice, stage, first, NAME, "1.0")
    upload_ok(devpid_server, alice, stage, second, NAME, "1.0")
    data = devpid_server.json("GET", f"/{stage}/{NAME}/1.0").json()["result"]
    assert data["summary"] == "second"
    (link,) = data["+links"]
    # as devpi: the replaced file's entries give way to one counting "overwrite" entry
    assert [e["what"] for e in link["log"]] == ["overwrite", "upload"]
    assert link["log"][0]["count"] == 1
    third = make_wheel(tmp_path / "c", NAME, "1.0", summary="third")
    upload_ok(devpid_server, alice, stage, third, NAME, "1.0")
    (link,) = devpid_server.json("GET", f"/{stage}/{NAME}/1.0").json()["result"]["+links"]
    assert [(e["what"], e.get("count")) for e in link["log"]] == [("overwrite", 2),
                                                                  ("upload", None)]


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        {"index.html": b"ok", "../../x": b"evil"},
        {"index.html": b"ok", "docs/../../x": b"evil"},
        {"/etc/x": b"evil"},
        {"..\\..\\x": b"evil"},
        {"c:/x": b"evil"},
    ],
)
def test_doc_zip_traversal(target: Target, members: dict[str, bytes]) -> None:
    before = target.state()
    r = http_upload(target.server, target.auth, target.stage, None, name=NAME, version="1.0",
                    filename=f"{NAME}-1.0.doc.zip", content=_zip_bytes(members),
                    action="doc_upload")
    assert_refused(r, 400, "escapes")
    assert target.state() == before
    r = requests.get(f"{target.server.url}/{target.stage}/{NAME}/1.0/+doc/index.html", timeout=30)
    assert r.status_code == 404


def test_doc_upload_refusals_and_success(target: Target, tmp_path: Path) -> None:
    server, stage, auth = target.server, target.stage, target.auth
    before = target.state()
    r = http_upload(server, auth, stage, None, name=NAME, version="1.0",
                    filename=f"{NAME}-1.0.doc.zip", content=b"not a zip", action="doc_upload")
    assert_refused(r, 400, "not a valid zip")
    r = http_upload(server, None, stage, None, name=NAME, version="1.0",
                    filename=f"{NAME}-1.0.doc.zip", content=_zip_bytes({"index.html": b"x"}),
                    action="doc_upload")
    assert_refused(r, 401, "authentication required")
    assert target.state() == before
    # a good one, without version: the latest release's version is used
    doc = make_doczip(tmp_path / f"{NAME}.doc.zip", {"index.html": b"<p>refuse docs</p>"})
    r = http_upload(server, auth, stage, doc, name=NAME, action="doc_upload")
    assert r.status_code == 200, r.text
    r = requests.get(f"{server.url}/{stage}/{NAME}/1.0/+doc/index.html", timeout=30)
    assert r.status_code == 200 and r.content == b"<p>refuse docs</p>"
    # ... and the docs of a non-volatile release cannot be replaced
    other = make_doczip(tmp_path / "other.zip", {"index.html": b"replaced"})
    r = http_upload(server, auth, stage, other, name=NAME, version="1.0", action="doc_upload")
    assert_refused(r, 409, "already exists")


def test_oversized_upload_is_refused(start_devpid: Any, tmp_path: Path) -> None:
    server: Devpid = start_devpid("--max-upload-size", "1M")
    auth = make_user(server, "big")
    stage = make_index(server, auth, "dev")
    small = make_wheel(tmp_path, "small-pkg", "1.0", extra_bytes=200 * 1024)
    upload_ok(server, auth, stage, small, "small-pkg", "1.0")
    before_serial = requests.get(f"{server.url}/+api", timeout=30).headers["X-Devpi-Serial"]
    big = make_wheel(tmp_path, "big-pkg", "1.0", extra_bytes=2 * 1024 * 1024)
    r = http_upload(server, auth, stage, big, name="big-pkg", version="1.0")
    assert_refused(r, 413, "upload limit")
    # chunked (no Content-Length) bodies are cut off as well
    body, ctype = _multipart(big, "big-pkg", "1.0")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    r = requests.post(f"{server.url}/{stage}/", data=chunks(), auth=auth, timeout=30,
                      headers={"Content-Type": ctype, "Accept": "application/json"})
    assert_refused(r, 413, "upload limit")
    lst = requests.get(f"{server.url}/{stage}/+simple/", headers={"Accept": SIMPLE_JSON},
                       timeout=30).json()
    assert [p["name"] for p in lst["projects"]] == ["small-pkg"]
    after_serial = requests.get(f"{server.url}/+api", timeout=30).headers["X-Devpi-Serial"]
    assert after_serial == before_serial
    assert requests.get(f"{server.url}/{stage}/+simple/big-pkg/", timeout=30).status_code == 404
    # the temp area holds no leftovers of the refused bodies
    leftovers = [p for p in server.serverdir.rglob("*") if p.is_file()
                 and p.stat().st_size > 1024 * 1024]
    assert leftovers == []


def _multipart(path: Path, name: str, version: str) -> tuple[bytes, str]:
    prepared = requests.Request(
        "POST", "http://x/", data={":action": "file_upload", "name": name, "version": version},
        files={"content": (path.name, path.read_bytes())},
    ).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.body, prepared.headers["Content-Type"]


def test_metadata_fields_and_release_records_are_bounded(
    target: Target, env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 19: one field of 1 MiB+ or a record of 4 MiB+ is a 400, nothing stored."""
    server, stage, auth, before = target.server, target.stage, target.auth, target.state()
    mib = 1024 * 1024
    # twine sends the wheel's own (too long) description; it shows our message and fails
    wheel = make_wheel(tmp_path, NAME, "3.0", description="d" * (mib + 10))
    proc = run(
        [tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
         "--repository-url", f"{server.url}/{stage}/", "-u", auth[0], "-p", auth[1],
         str(wheel)],
        env, check=False,
    )
    assert proc.returncode != 0 and "400" in proc.stdout + proc.stderr, proc.stdout
    r = http_upload(server, auth, stage, wheel, name=NAME, version="3.0")
    assert_refused(r, 400, "metadata field 'description'")
    # a form field, a list field, the record as a whole, a submit without a file
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0",
                    extra={"author": "s" * (mib + 10)})
    assert_refused(r, 400, "metadata field 'author'")
    fields = {f"classifiers{n}": ("", "c" * (mib // 2)) for n in range(3)}
    prepared = requests.Request(
        "POST", f"{server.url}/{stage}/", auth=auth,
        files=[(":action", (None, "submit")), ("name", (None, NAME)),
               ("version", (None, "2.0")),
               *(("classifiers", (None, v)) for _, v in fields.values())],
    ).prepare()
    r = requests.Session().send(prepared, timeout=30)
    assert_refused(r, 400, "metadata field 'classifiers'")
    big = {key: "m" * (mib - 100) for key in ("home_page", "author", "license", "keywords",
                                             "maintainer")}
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0", extra=big)
    assert_refused(r, 400, "release metadata is")
    r = http_upload(server, auth, stage, None, name=NAME, version="2.0", action="submit",
                    extra={"summary": "s" * (mib + 10)})
    assert_refused(r, 400, "metadata field 'summary'")
    # fields that are not metadata are bounded by the form parser: each and all together
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0",
                    extra={"comment": "x" * (3 * mib)})
    assert_refused(r, 400, "form field 'comment' is larger")
    r = http_upload(server, auth, stage, target.wheel2, name=NAME, version="2.0",
                    extra={f"junk{n}": "x" * (mib + mib // 2) for n in range(6)})
    assert_refused(r, 400, "in total")
    assert target.state() == before
