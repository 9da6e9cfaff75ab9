"""The domain's names, keys, served paths and permission rules (pure functions, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from devpid.domain import keys, paths, permissions
from devpid.domain.entities import InvalidName, Project, Stage, User
from devpid.domain.paths import UnsafePath

SHA = "0123456789abcdef" * 4


# -- entities: names, keys, paths ---------------------------------------------------------------
def test_entities_know_their_keys_and_paths() -> None:
    stage = Stage.parse("alice/dev")
    assert (stage.name, stage.key, stage.owner) == ("alice/dev", "index/alice/dev", User("alice"))
    project = stage.project("Foo_Bar.baz")
    assert project.name == "foo-bar-baz"  # PEP 503
    assert project.key == "project/alice/dev/foo-bar-baz"
    assert project.mirror_key == "mirror/alice/dev/foo-bar-baz"
    assert project.releases_prefix == "release/alice/dev/foo-bar-baz/"
    assert project.files_prefix == "file/alice/dev/foo-bar-baz/"
    assert project.docs_prefix == "doc/alice/dev/foo-bar-baz/"
    assert project.toxresults_prefix == "toxresult/alice/dev/foo-bar-baz/"
    release = project.release("1.0")
    assert release.key == "release/alice/dev/foo-bar-baz/1.0"
    assert release.docs_url == "alice/dev/foo-bar-baz/1.0/+doc/"
    f = project.file("foo_bar_baz-1.0-py3-none-any.whl", SHA)
    assert f.key == "file/alice/dev/foo-bar-baz/foo_bar_baz-1.0-py3-none-any.whl"
    assert f.path == f"alice/dev/+f/012/3456789abcdef/{f.filename}"
    doc = release.doc("foo-bar-baz-1.0.doc.zip", SHA)
    assert doc.key == "doc/alice/dev/foo-bar-baz/1.0"
    assert doc.path == "alice/dev/+f/012/3456789abcdef/foo-bar-baz-1.0.doc.zip"
    tox = f.toxresult(2, f"{f.filename}.toxresult-20260101000000-2")
    assert tox.key == f"toxresult/alice/dev/foo-bar-baz/{f.filename}/2"
    assert tox.path == f"alice/dev/+f/012/3456789abcdef/{tox.filename}"
    assert User.parse("bob").key == "user/bob"
    assert User("bob").tokens_prefix == "token/bob/"
    assert Stage.from_key("index/alice/dev") == stage


@pytest.mark.parametrize("name", ["alice", "alice/", "/dev", "al ice/dev", "../dev", "a/+b",
                                  "alice/dev/x", ".x/dev"])
def test_bad_stage_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        Stage.parse(name)


def test_bad_project_version_and_file_names_are_refused() -> None:
    stage = Stage.parse("alice/dev")
    for bad in ("", "-foo", "foo/bar", "a" * 201):
        with pytest.raises(InvalidName):
            stage.project(bad)
    project = Project.parse(stage, "foo")
    for version in ("", "1/2", "..", "1 0", "1\x00"):
        with pytest.raises(InvalidName):
            project.release(version)
    for filename in ("", ".", "..", "a/b.whl", "a\\b.whl", "x\n.whl"):
        with pytest.raises(UnsafePath):
            project.file(filename, SHA)


# -- keys ------------------------------------------------------------------------------------
def test_key_functions_and_parse() -> None:
    assert keys.user("bob") == "user/bob" and keys.user_name("user/bob") == "bob"
    assert keys.index("a", "b") == keys.index_of_stage("a/b") == "index/a/b"
    assert keys.stage_name("index/a/b") == "a/b"
    assert keys.index_prefix() == "index/" and keys.index_prefix("a") == "index/a/"
    assert keys.token("bob", "0123") == "token/bob/0123"
    assert keys.toxresult("a/b", "p", "p-1.whl", 3) == "toxresult/a/b/p/p-1.whl/3"
    assert keys.files_of_stage("a/b") == "file/a/b/"
    assert keys.mirror_prefix("a/b") == "mirror/a/b/"
    assert keys.project_prefix("a/b") == "project/a/b/"
    assert keys.of_project("a/b", "p") == [
        "release/a/b/p/", "file/a/b/p/", "doc/a/b/p/", "toxresult/a/b/p/"]
    assert keys.stage_prefixes("a/") == [
        "index/a/", "project/a/", "release/a/", "file/a/", "doc/a/", "toxresult/a/",
        "mirror/a/"]
    assert keys.parse("file/a/b/p/p-1.whl") == ("file", "a/b", "p", "p-1.whl")
    assert keys.parse("toxresult/a/b/p/p-1.whl/0") == ("toxresult", "a/b", "p", "p-1.whl/0")
    assert keys.parse("index/a/b") == ("index", "a/b", "", "")
    assert keys.parse("user/bob") == ("user", "bob", "", "")
    assert keys.parse("token/bob/0123") == ("token", "bob", "", "0123")
    assert keys.last_part("release/a/b/p/1.0") == "1.0"
    assert keys.kind("mirror/a/b/p") == "mirror"


@pytest.mark.parametrize(("key", "ok"), [
    ("user/bob", True), ("index/a/b", True), ("file/a/b/p/f.whl", True),
    ("toxresult/a/b/p/f.whl/0", True), ("file/a/b/p", False), ("index/a//b", False),
    ("index/a/b/c", False), ("nonsense/a", False), ("user/", False),
])
def test_well_formed(key: str, ok: bool) -> None:
    assert keys.well_formed(key) is ok


def test_record_blobs_and_paths_of() -> None:
    value = {"filename": "p-1.whl", "path": "a/b/+f/012/3456789abcdef/p-1.whl",
             "sha256": SHA, "metadata_sha256": "f" * 64}
    assert keys.record_blobs("file/a/b/p/p-1.whl", value) == [SHA, "f" * 64]
    assert keys.record_blobs("release/a/b/p/1", value) == []
    assert keys.paths_of("file/a/b/p/p-1.whl", value) == [(value["path"], "p-1.whl")]
    page = {"files": [{"filename": "p-1.whl", "path": "a/b/+e/x/p-1.whl",
                       "hashes": {"sha256": SHA.upper()}}]}
    assert keys.paths_of("mirror/a/b/p", page) == [("a/b/+e/x/p-1.whl", "p-1.whl")]
    assert keys.mirror_page_blobs(page) == [SHA]


def test_store_keys_is_the_domain_s() -> None:
    """The old module is a re-export: code (and other branches) importing it get the same."""
    from devpid.store import keys as old

    assert old.file is keys.file and old.paths_of is keys.paths_of


# -- paths -----------------------------------------------------------------------------------
def test_file_paths() -> None:
    assert paths.file_path("a/b", SHA, "p-1.whl") == "a/b/+f/012/3456789abcdef/p-1.whl"
    assert paths.file_dir("a/b", SHA) == "a/b/+f/012/3456789abcdef"
    assert paths.beside("a/b/+f/012/345/p-1.whl", "r.json") == "a/b/+f/012/345/r.json"
    assert paths.in_dir("a/b/+f/012/345", "r.json") == "a/b/+f/012/345/r.json"
    assert paths.in_area("a/b", "+f", "012/345/p-1.whl") == "a/b/+f/012/345/p-1.whl"


def test_mirror_paths() -> None:
    hashed = paths.mirror_file_path("root/pypi", "p-1.whl", {"md5": "a" * 32, "sha256": SHA},
                                    "https://files.example/p/p-1.whl")
    assert hashed == "root/pypi/+f/012/3456789abcdef/p-1.whl"
    assert paths.mirror_file_path("root/pypi", "p-1.whl", {"md5": "a" * 32}, "u") == (
        "root/pypi/+f/aaa/aaaaaaaaaaaaa/p-1.whl")
    external = paths.mirror_file_path(
        "root/pypi", "p-1.tar.gz", {}, "https://u:pw@files.example:8443/a b/p/p-1.tar.gz")
    assert external == "root/pypi/+e/https_files.example_8443_a_b_p/p-1.tar.gz"


@pytest.mark.parametrize("rest", ["../x/p.whl", "a/../../p.whl", "./p.whl", "a//p.whl", "",
                                  "/etc/passwd", "a\\..\\p.whl", "a/p\x00.whl"])
def test_path_traversal_is_refused(rest: str) -> None:
    with pytest.raises(UnsafePath) as e:
        paths.in_area("a/b", "+f", rest)
    assert e.value.path == f"a/b/+f/{rest}"  # for the 404 message
    with pytest.raises(UnsafePath):
        paths.check_relative(rest)


@pytest.mark.parametrize(("sha", "filename"), [
    (SHA, "../p.whl"), (SHA, "a/p.whl"), (SHA, ".."), (SHA, ""), ("../../etc", "p.whl"),
    ("0123", "p.whl"), ("G" * 64, "p.whl"),
])
def test_unsafe_file_paths_are_refused(sha: str, filename: str) -> None:
    with pytest.raises(UnsafePath):
        paths.file_path("a/b", sha, filename)


def test_unknown_area_is_refused() -> None:
    with pytest.raises(UnsafePath):
        paths.in_area("a/b", "+doc", "x")


# -- permissions -----------------------------------------------------------------------------
ANON, AUTH = permissions.ANONYMOUS, permissions.AUTHENTICATED
USERS: list[str | None] = [None, "root", "alice", "bob", "carol"]


def _matrix(check: Any) -> dict[str | None, bool]:
    return {u: check(u) for u in USERS}


def test_acl_principals() -> None:
    assert _matrix(lambda u: permissions.acl_allows([ANON], u)) == dict.fromkeys(USERS, True)
    assert _matrix(lambda u: permissions.acl_allows([":authenticated:"], u)) == {
        None: False, "root": True, "alice": True, "bob": True, "carol": True}
    assert _matrix(lambda u: permissions.acl_allows(["bob"], u)) == {
        None: False, "root": False, "alice": False, "bob": True, "carol": False}
    assert _matrix(lambda u: permissions.acl_allows([], u)) == dict.fromkeys(USERS, False)


def test_upload_and_delete_matrix() -> None:
    """Index alice/dev, acl_upload [alice, :AUTHENTICATED:]: anyone logged in uploads, only
    root, the owner and *named* uploaders delete; a missing acl_upload lets root only."""
    config = {"acl_upload": ["bob", AUTH]}
    assert _matrix(lambda u: permissions.can_upload_to(u, "alice", config)) == {
        None: False, "root": True, "alice": True, "bob": True, "carol": True}
    assert _matrix(lambda u: permissions.can_delete_from(u, "alice", config)) == {
        None: False, "root": True, "alice": True, "bob": True, "carol": False}
    assert _matrix(lambda u: permissions.can_upload_to(u, "alice", {})) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": False}
    assert _matrix(lambda u: permissions.can_upload_toxresult(u, "alice", {})) == (
        dict.fromkeys(USERS, True))
    assert _matrix(lambda u: permissions.can_upload_toxresult(
        u, "alice", {"acl_toxresult_upload": ["carol"]})) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": True}


def test_read_matrix_follows_bases() -> None:
    configs: dict[str, dict[str, Any]] = {
        "alice/dev": {"bases": ["bob/private"]},  # default acl_read: everyone
        "bob/private": {"acl_read": ["carol"], "bases": []},
        "alice/open": {"acl_read": [ANON]},
    }
    assert _matrix(lambda u: permissions.can_read(configs.get, u, "alice/open")) == (
        dict.fromkeys(USERS, True))
    assert _matrix(lambda u: permissions.can_read_index(u, "alice/dev", configs["alice/dev"])
                   ) == dict.fromkeys(USERS, True)
    # alice owns alice/dev but may not read its base: the chain is refused to her
    assert _matrix(lambda u: permissions.can_read(configs.get, u, "alice/dev")) == {
        None: False, "root": True, "alice": False, "bob": True, "carol": True}
    assert permissions.read_acl({}) == [ANON]


def test_user_and_index_management_matrix() -> None:
    assert _matrix(lambda u: permissions.can_manage_index(u, "alice")) == {
        None: False, "root": True, "alice": True, "bob": False, "carol": False}
    restrict = ["bob"]  # --restrict-modify bob
    assert _matrix(lambda u: permissions.can_manage_index(u, "alice", restrict)) == {
        None: False, "root": True, "alice": False, "bob": True, "carol": False}
    assert _matrix(lambda u: permissions.can_create_user(u, None)) == dict.fromkeys(USERS, True)
    assert _matrix(lambda u: permissions.can_create_user(u, restrict)) == {
        None: False, "root": True, "alice": False, "bob": True, "carol": False}
    assert _matrix(lambda u: permissions.can_delete_user(u, "alice", None)) == {
        None: False, "root": True, "alice": True, "bob": False, "carol": False}
    assert _matrix(lambda u: permissions.can_delete_user(u, "bob", restrict)) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": False}
    assert _matrix(lambda u: permissions.can_delete_user(u, "root", None)) == (
        dict.fromkeys(USERS, False))
    # own password always; other fields as managing
    assert _matrix(lambda u: permissions.can_modify_user(u, "alice", {"password"}, restrict)
                   ) == {None: False, "root": True, "alice": True, "bob": True, "carol": False}
    assert _matrix(lambda u: permissions.can_modify_user(u, "alice", {"email"}, restrict)) == {
        None: False, "root": True, "alice": False, "bob": True, "carol": False}
    assert _matrix(permissions.can_set_pwhash) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": False}
    assert _matrix(lambda u: permissions.can_manage_tokens(u, "alice")) == {
        None: False, "root": True, "alice": True, "bob": False, "carol": False}


def test_mirror_status_and_secrets_matrix() -> None:
    assert _matrix(lambda u: permissions.can_set_mirror(u, ["root"])) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": False}
    assert _matrix(lambda u: permissions.can_set_mirror(u, [AUTH])) == {
        None: False, "root": True, "alice": True, "bob": True, "carol": True}
    assert _matrix(lambda u: permissions.can_see_status(u, [ANON])) == dict.fromkeys(USERS, True)
    assert _matrix(lambda u: permissions.can_see_status(u, ["carol"])) == {
        None: False, "root": True, "alice": False, "bob": False, "carol": True}
    assert _matrix(lambda u: permissions.can_see_secrets(u, "alice")) == {
        None: False, "root": True, "alice": True, "bob": False, "carol": False}


def test_old_names_are_the_domain_s() -> None:
    """auth, readacl and redact keep their names for callers; the rules are the domain's."""
    from devpid import auth, readacl

    assert auth.can_upload is permissions.can_upload
    assert auth.can_delete_entry is permissions.can_delete_entry
    assert readacl.may_read is permissions.can_read
    assert readacl.read_acl is permissions.read_acl
