"""``devpid export`` / ``devpid import``: a verified round trip of everything a server holds.

State is built directly through the store API (as keys.py lays it out), so these tests do not
depend on the upload code; one end-to-end test goes through twine and the simple API.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid import auth
from devpid.dump import (
    AUDIT_NAME,
    JSON_NAME,
    MANIFEST_NAME,
    Progress,
    blob_relpath,
    iter_blob_digests,
)
from devpid.store import keys, open_store
from tests.conftest import ROOT_PASSWORD, import_store_args, init_serverdir, run, tool
from tests.support.pkgbuild import make_wheel

CLOSED_UPSTREAM = "http://127.0.0.1:9/simple/"  # nothing listens: no test talks upstream
STAMP = "2026-01-02T03:04:05.000000Z"


def devpid(*args: str, check: bool = True) -> Any:
    return run([tool("devpid"), *args], dict(os.environ), check=check)


def _file_value(stage: str, path: Path, sha: str, meta_sha: str | None, version: str,
                url: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "filename": path.name,
        "path": f"{stage}/+f/{sha[:3]}/{sha[3:16]}/{path.name}",
        "sha256": sha,
        "md5": hashlib.md5(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
        "version": version,
        "upload_time": STAMP,
        "requires_python": ">=3.8",
        "yanked": False,
        "log": [{"what": "upload", "who": "alice", "when": [2026, 1, 2, 3, 4, 5], "dst": stage}],
    }
    if meta_sha:
        value["metadata_sha256"] = meta_sha
    if url:
        value["url"] = url
    return value


def build_state(serverdir: Path, work: Path) -> None:
    """An initialised server with users, indexes with bases, releases, files, docs and a
    cached mirror project, written through the store exactly as keys.py describes."""
    init_serverdir(serverdir, CLOSED_UPSTREAM)
    store, blobs = open_store(serverdir)
    try:
        with store.transaction() as tx:
            tx.set(keys.user("alice"), {"pwhash": auth.hash_password("alice-pw", 4),
                                        "created": "2026-01-01T00:00:00Z", "email": "a@x"})
            tx.set(keys.index("alice", "base"), {
                "type": "stage", "volatile": False, "acl_upload": ["alice"],
                "acl_toxresult_upload": [":ANONYMOUS:"], "bases": [],
                "mirror_whitelist": [], "mirror_whitelist_inheritance": "intersection"})
            tx.set(keys.index("alice", "dev"), {
                "type": "stage", "volatile": True, "acl_upload": ["alice"],
                "acl_toxresult_upload": [":ANONYMOUS:"], "bases": ["alice/base", "root/pypi"],
                "mirror_whitelist": [], "mirror_whitelist_inheritance": "intersection",
                "title": "Dev"})
        for stage, name, version in [("alice/base", "Hello_Pkg", "1.0"),
                                     ("alice/dev", "Hello_Pkg", "1.1"),
                                     ("alice/dev", "other", "2.0")]:
            project = re.sub(r"[-_.]+", "-", name).lower()
            wheel = make_wheel(work, name, version, requires_python=">=3.8", extra_bytes=2000)
            sha = blobs.put_bytes(wheel.read_bytes())
            meta_sha = blobs.put_bytes(f"Name: {name}\nVersion: {version}\n".encode())
            with store.transaction() as tx:
                tx.set(keys.project(stage, project), {"name": name, "created": STAMP})
                tx.set(keys.release(stage, project, version),
                       {"name": name, "version": version, "summary": "s",
                        "requires_python": ">=3.8", "requires_dist": []})
                tx.set(keys.file(stage, project, wheel.name),
                       _file_value(stage, wheel, sha, meta_sha, version))
        docs = b"PK-not-really-a-zip-but-bytes-are-bytes"
        doc_sha = blobs.put_bytes(docs)
        with store.transaction() as tx:
            tx.set(keys.doc("alice/dev", "hello-pkg", "1.1"), {
                "filename": "hello-pkg-1.1.doc.zip",
                "path": f"alice/dev/+f/{doc_sha[:3]}/{doc_sha[3:16]}/hello-pkg-1.1.doc.zip",
                "sha256": doc_sha, "size": len(docs), "version": "1.1", "upload_time": STAMP,
                "log": []})
        # a mirror page listing two files, only one of which was ever cached
        cached = make_wheel(work, "upstream-thing", "3.0")
        cached_sha = blobs.put_bytes(cached.read_bytes())
        never = "e" * 64
        with store.transaction() as tx:
            tx.set(keys.mirror_page("root/pypi", "upstream-thing"), {
                "name": "upstream-thing", "etag": '"x"', "upstream_serial": 7, "files": [
                    {"filename": cached.name, "url": f"{CLOSED_UPSTREAM}f/{cached.name}",
                     "hashes": {"sha256": cached_sha},
                     "path": f"root/pypi/+f/{cached_sha[:3]}/{cached_sha[3:16]}/{cached.name}"},
                    {"filename": "upstream_thing-2.0-py3-none-any.whl",
                     "url": f"{CLOSED_UPSTREAM}f/upstream_thing-2.0-py3-none-any.whl",
                     "hashes": {"sha256": never},
                     "path": f"root/pypi/+f/{never[:3]}/{never[3:16]}/"
                             "upstream_thing-2.0-py3-none-any.whl"}]})
            tx.set(keys.file("root/pypi", "upstream-thing", cached.name),
                   _file_value("root/pypi", cached, cached_sha, None, "3.0",
                               url=f"{CLOSED_UPSTREAM}f/{cached.name}"))
    finally:
        store.close()


def snapshot(serverdir: Path) -> list[tuple[str, Any]]:
    store, _ = open_store(serverdir, readonly=True)
    try:
        return list(store.snapshot())
    finally:
        store.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The module's source server and its dump, built once (tests get copies to break)."""
    base = tmp_path_factory.mktemp("dump-source")
    serverdir = base / "source"
    build_state(serverdir, base / "work")
    target = base / "dump"
    devpid("export", "--serverdir", str(serverdir), str(target))
    return serverdir, target


@pytest.fixture
def source(tmp_path: Path, pristine: tuple[Path, Path]) -> Path:
    serverdir = tmp_path / "source"
    shutil.copytree(pristine[0], serverdir, symlinks=True)
    return serverdir


@pytest.fixture
def dump(tmp_path: Path, pristine: tuple[Path, Path]) -> Path:
    target = tmp_path / "dump"
    shutil.copytree(pristine[1], target, symlinks=True)
    return target


def test_round_trip_is_identical_and_logins_work(
    tmp_path: Path, source: Path, dump: Path, start_devpid: Any
) -> None:
    # the dump documents itself and sha256sum can check it
    doc = json.loads((dump / JSON_NAME).read_text())
    assert doc["format"] == "devpid-dump" and doc["version"] == 1
    assert doc["serial"] == 6 and doc["source_uuid"]
    entries = [tuple(e) for e in doc["entries"]]
    assert entries == snapshot(source)
    assert run(["sha256sum", "--quiet", "-c", MANIFEST_NAME], dict(os.environ), cwd=dump)
    digests = iter_blob_digests(entries)
    assert len(digests) == 8  # 4 wheels, 3 metadata files, 1 doc; never-cached one skipped
    listed = {line.split("  ")[1] for line in (dump / MANIFEST_NAME).read_text().splitlines()}
    assert listed == {JSON_NAME, AUDIT_NAME} | {blob_relpath(d) for d in digests}

    target = tmp_path / "imported"
    proc = devpid("import", "--serverdir", str(target), str(dump), "--bcrypt-rounds", "4",
                  *import_store_args())
    assert "imported devpid dump" in proc.stdout
    assert snapshot(target) == snapshot(source)
    for digest in digests:
        rel = blob_relpath(digest).removeprefix("blobs/")
        assert (target / "+blobs" / rel).read_bytes() == (source / "+blobs" / rel).read_bytes()
    # serial 0: users and index configs; then one serial per (stage, project)
    store, _ = open_store(target, readonly=True)
    try:
        first = store.changelog(0) or {}
        assert sorted(first) == ["index/alice/base", "index/alice/dev", "index/root/pypi",
                                 "user/alice", "user/root"]
        per_serial = [sorted({"/".join(k.split("/")[1:4]) for k in store.changelog(s) or {}})
                      for s in range(1, store.serial + 1)]
        assert per_serial == [["alice/base/hello-pkg"], ["alice/dev/hello-pkg"],
                              ["alice/dev/other"], ["root/pypi/upstream-thing"]]
        assert store.lookup_path(first_path(entries, "file/alice/dev/other/")) is not None
        assert store.uuid != doc["source_uuid"]
    finally:
        store.close()

    server = start_devpid(init=False, name="imported")
    assert server.login("alice", "alice-pw")
    assert server.login("root", ROOT_PASSWORD)
    r = requests.post(server.url + "/+login", json={"user": "alice", "password": "wrong"})
    assert r.status_code == 401
    r = server.json("GET", "/alice/dev")
    assert r.ok and r.json()["result"]["bases"] == ["alice/base", "root/pypi"]


def first_path(entries: list[Any], prefix: str) -> str:
    return next(v["path"] for k, v in entries if k.startswith(prefix))


def test_hard_links_share_blobs(tmp_path: Path, source: Path) -> None:
    dump = tmp_path / "hl-dump"
    devpid("export", "--hard-links", "--serverdir", str(source), str(dump))
    blob = next((dump / "blobs").rglob("*/*/*"))
    rel = blob.relative_to(dump / "blobs")
    assert os.path.samefile(blob, source / "+blobs" / rel)
    target = tmp_path / "hl-imported"
    devpid("import", "--hard-links", "--serverdir", str(target), str(dump))
    assert os.path.samefile(blob, target / "+blobs" / rel)
    assert snapshot(target) == snapshot(source)


def test_export_of_uninitialised_serverdir_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for serverdir in (tmp_path / "missing", tmp_path / "empty"):
        proc = devpid("export", "--serverdir", str(serverdir), str(tmp_path / "d"), check=False)
        assert proc.returncode == 1
        assert "is not an initialised devpid server directory" in proc.stderr
        assert "nothing to export" in proc.stderr
        assert not (tmp_path / "d").exists()
    assert not (tmp_path / "missing").exists()  # export never creates the source
    assert list((tmp_path / "empty").iterdir()) == []


def test_export_refuses_non_empty_target_unless_forced(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    (target / "precious").write_text("keep me")
    proc = devpid("export", "--serverdir", str(source), str(target), check=False)
    assert proc.returncode == 1 and "must not exist or be empty" in proc.stderr
    assert (target / "precious").read_text() == "keep me"
    devpid("export", "--force", "--serverdir", str(source), str(target))
    assert not (target / "precious").exists() and (target / JSON_NAME).is_file()
    assert not list(tmp_path.glob("t.tmp-*"))


def test_export_aborts_on_a_missing_blob(tmp_path: Path, source: Path) -> None:
    entries = dict(snapshot(source))
    sha = entries["file/alice/dev/other/other-2.0-py3-none-any.whl"]["sha256"]
    (source / "+blobs" / sha[:2] / sha[2:4] / sha).unlink()
    proc = devpid("export", "--serverdir", str(source), str(tmp_path / "d"), check=False)
    assert proc.returncode == 1
    assert "file/alice/dev/other/other-2.0-py3-none-any.whl" in proc.stderr
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob("d.tmp-*"))


def _rewrite_json(dump: Path, edit: Any) -> None:
    """Change the dump's JSON and fix its manifest line, so only ``edit`` is wrong."""
    path = dump / JSON_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = dump / MANIFEST_NAME
    lines = [f"{digest}  {JSON_NAME}" if line.endswith(f"  {JSON_NAME}") else line
             for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(lines) + "\n")


def _set_entry(doc: dict[str, Any], key: str, value: Any) -> None:
    for entry in doc["entries"]:
        if entry[0] == key:
            entry[1] = value


def _other_wheel_blob(dump: Path) -> Path:
    doc = json.loads((dump / JSON_NAME).read_text())
    value = dict(doc["entries"])["file/alice/dev/other/other-2.0-py3-none-any.whl"]
    return dump / blob_relpath(value["sha256"])


def tamper_blob(dump: Path) -> str:
    blob = _other_wheel_blob(dump)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    return f"{blob.relative_to(dump)}: sha256 mismatch"


def truncate_json(dump: Path) -> str:
    path = dump / JSON_NAME
    path.write_bytes(path.read_bytes()[:-200])
    return f"{JSON_NAME}: sha256 mismatch"


def truncate_json_and_manifest(dump: Path) -> str:
    _rewrite_json(dump, lambda doc: None)
    path = dump / JSON_NAME
    path.write_bytes(path.read_bytes()[:-200])
    _rewrite_json_manifest_only(dump)
    return f"{JSON_NAME}: not valid JSON"


def _rewrite_json_manifest_only(dump: Path) -> None:
    digest = hashlib.sha256((dump / JSON_NAME).read_bytes()).hexdigest()
    manifest = dump / MANIFEST_NAME
    lines = [f"{digest}  {JSON_NAME}" if line.endswith(f"  {JSON_NAME}") else line
             for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(lines) + "\n")


def missing_blob(dump: Path) -> str:
    blob = _other_wheel_blob(dump)
    blob.unlink()
    return f"{blob.relative_to(dump)}: listed in {MANIFEST_NAME} but missing"


def missing_blob_and_manifest_line(dump: Path) -> str:
    blob = _other_wheel_blob(dump)
    blob.unlink()
    rel = str(blob.relative_to(dump))
    manifest = dump / MANIFEST_NAME
    lines = [line for line in manifest.read_text().splitlines() if not line.endswith(rel)]
    manifest.write_text("\n".join(lines) + "\n")
    return "file/alice/dev/other/other-2.0-py3-none-any.whl: its blob " + rel


def base_cycle(dump: Path) -> str:
    def edit(doc: dict[str, Any]) -> None:
        base = dict(doc["entries"])["index/alice/base"]
        _set_entry(doc, "index/alice/base", dict(base, bases=["alice/dev"]))

    _rewrite_json(dump, edit)
    return "bases would form a cycle"


def missing_base(dump: Path) -> str:
    def edit(doc: dict[str, Any]) -> None:
        dev = dict(doc["entries"])["index/alice/dev"]
        _set_entry(doc, "index/alice/dev", dict(dev, bases=["bob/x"]))

    _rewrite_json(dump, edit)
    return "index alice/dev: base index 'bob/x' does not exist"


def unknown_version(dump: Path) -> str:
    _rewrite_json(dump, lambda doc: doc.update(version=2))
    return "dump format version 2 is not supported"


@pytest.mark.parametrize("breakage", [
    tamper_blob, truncate_json, truncate_json_and_manifest, missing_blob,
    missing_blob_and_manifest_line, base_cycle, missing_base, unknown_version,
])
def test_broken_dump_fails_before_writing_anything(
    tmp_path: Path, dump: Path, breakage: Any
) -> None:
    expected = breakage(dump)
    target = tmp_path / "imported"
    proc = devpid("import", "--serverdir", str(target), str(dump), check=False)
    assert proc.returncode == 1, proc.stdout
    assert expected in proc.stderr
    assert "nothing written" in proc.stderr
    assert not target.exists()
    assert not list(tmp_path.glob("imported*"))


def test_import_refuses_a_serverdir_with_data(tmp_path: Path, dump: Path) -> None:
    target = tmp_path / "existing"
    init_serverdir(target, CLOSED_UPSTREAM)
    before = snapshot(target)
    proc = devpid("import", "--serverdir", str(target), str(dump), check=False)
    assert proc.returncode == 1 and "already has data" in proc.stderr
    assert snapshot(target) == before
    # an existing EMPTY directory is fine
    (tmp_path / "fresh").mkdir()
    devpid("import", "--serverdir", str(tmp_path / "fresh"), str(dump))
    doc = json.loads((dump / JSON_NAME).read_text())
    assert snapshot(tmp_path / "fresh") == [tuple(e) for e in doc["entries"]]


def test_export_from_a_live_daemon(tmp_path: Path, start_devpid: Any) -> None:
    server = start_devpid(upstream_url=CLOSED_UPSTREAM)
    assert server.json("PUT", "/bob", json={"password": "bob-pw"}).status_code == 201
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            r = server.json("PUT", f"/bob/i{i}", auth=("bob", "bob-pw"), json={})
            if not r.ok:
                errors.append(r.text)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        dumps = []
        for n in range(3):
            target = tmp_path / f"live{n}"
            devpid("export", "--serverdir", str(server.serverdir), str(target))
            dumps.append(json.loads((target / JSON_NAME).read_text()))
    finally:
        stop.set()
        thread.join()
    assert not errors
    for doc in dumps:
        # consistent at one serial: the serial-0 keys plus bob plus one index per later serial
        names = [k for k, _ in doc["entries"]]
        assert "user/bob" in names
        assert len([k for k in names if k.startswith("index/bob/")]) == doc["serial"] - 1
    assert server.json("GET", "/bob").ok  # the daemon never noticed
    devpid("import", "--serverdir", str(tmp_path / "from-live"), str(tmp_path / "live2"))
    assert snapshot(tmp_path / "from-live") == [tuple(e) for e in dumps[2]["entries"]]


def test_progress_lines_and_bar() -> None:
    plain = io.StringIO()
    p = Progress("exported", 3000, "files", plain)
    for _ in range(3000):
        p.advance()
    p.finish()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "exported 300/3000 files" and lines[-1] == "exported 3000/3000 files"
    assert len(lines) == 10

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    p = Progress("imported", 5, "projects", tty)
    for _ in range(5):
        p.advance()
    p.finish()
    out = tty.getvalue()
    assert out.startswith("\rimported [") and out.endswith("5/5 projects\n")
    assert out.count("\n") == 1


def without_serial(page: dict[str, Any]) -> dict[str, Any]:
    return dict(page, meta={k: v for k, v in page["meta"].items() if k != "_last-serial"})


def test_end_to_end_twine_upload_export_import(
    tmp_path: Path, start_devpid: Any, env: dict[str, str]
) -> None:
    server = start_devpid(upstream_url=CLOSED_UPSTREAM)
    assert server.json("PUT", "/carol", json={"password": "carol-pw"}).status_code == 201
    assert server.json("PUT", "/carol/dev", auth=("carol", "carol-pw"), json={}).ok
    wheels = [make_wheel(tmp_path / "dist", "e2e-pkg", v, requires_python=">=3.8")
              for v in ("1.0", "1.1")]
    run([tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
         "--repository-url", f"{server.url}/carol/dev/", "-u", "carol", "-p", "carol-pw",
         *map(str, wheels)], env)
    page_path = "/carol/dev/+simple/e2e-pkg/"
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    before = requests.get(server.url + page_path, headers=accept)
    assert before.ok, before.text
    devpid("export", "--serverdir", str(server.serverdir), str(tmp_path / "e2e-dump"))
    server.stop()
    devpid("import", "--serverdir", str(tmp_path / "e2e-imported"), str(tmp_path / "e2e-dump"),
           *import_store_args())
    imported = start_devpid(init=False, name="e2e-imported")
    after = requests.get(imported.url + page_path, headers=accept)
    assert after.ok
    # identical except the serial, which import renumbers (one serial per project)
    assert without_serial(after.json()) == without_serial(before.json())
    files = after.json()["files"]
    assert len(files) == 2
    for f in files:
        url = requests.compat.urljoin(imported.url + page_path, f["url"])
        body = requests.get(url, timeout=10).content
        wheel = next(w for w in wheels if w.name == f["filename"])
        assert body == wheel.read_bytes()
    assert imported.login("carol", "carol-pw")
