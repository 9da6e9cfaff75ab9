"""Behaviours devpi-client 7.3 (and its own test suite) rely on, one test each.

Each is driven with the real devpi client or with requests against the session daemon;
tests/test_devpi_client_suite.py runs the client's whole suite besides.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT_PASSWORD, Devpid
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import make_sdist, make_wheel
from tests.test_private_index import devpi, http_upload, make_index, make_user, upload_ok


def client_logged_in(server: Devpid, env: dict[str, str], auth: tuple[str, str],
                     index: str | None = None) -> None:
    devpi(env, "use", server.url + "/")
    devpi(env, "login", auth[0], "--password", auth[1])
    if index:
        devpi(env, "use", index)


def test_status_line_has_standard_reason_and_client_says_it_once(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str]
) -> None:
    r = devpid_server.json("POST", "/+login", json={"user": alice[0], "password": "wrong"})
    assert (r.status_code, r.reason) == (401, "Unauthorized")
    assert "could not be authenticated" in r.json()["message"]
    r = devpid_server.json("GET", "/no-such-user-here")
    assert (r.status_code, r.reason) == (404, "Not Found")
    devpi(env, "use", devpid_server.url + "/")
    out = devpi(env, "login", alice[0], "--password", "wrong", check=False)
    assert f"401 Unauthorized: user '{alice[0]}' could not be authenticated" in out, out
    assert out.count("could not be authenticated") == 1, out


def test_upload_errors_keep_the_message_in_the_status_line(
    devpid_server: Devpid, alice: tuple[str, str], tmp_path: Path
) -> None:
    """twine shows only the status line of a refused upload; 401 stays Unauthorized."""
    stage = make_index(devpid_server, alice, "reasons")
    wheel = make_wheel(tmp_path, "reason-pkg", "1.0")
    r = http_upload(devpid_server, alice, stage, wheel, name="reason-pkg", version="2.0")
    assert r.status_code == 400 and "does not contain version" in r.reason, r.reason
    r = http_upload(devpid_server, None, stage, wheel, name="reason-pkg", version="1.0")
    assert (r.status_code, r.reason) == (401, "Unauthorized")


def test_register_as_urlencoded_form(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    stage = make_index(devpid_server, alice, "register")
    r = requests.post(f"{devpid_server.url}/{stage}/", auth=alice, data={
        ":action": "submit", "name": "Registered.Pkg", "version": "1.0",
        "summary": "registered by form"})
    assert r.status_code == 200, (r.status_code, r.reason, r.text)
    data = devpid_server.json("GET", f"/{stage}/registered-pkg/1.0").json()["result"]
    assert data["summary"] == "registered by form"
    r = requests.post(f"{devpid_server.url}/{stage}/", data={
        ":action": "submit", "name": "x", "version": "1"})
    assert r.status_code == 401  # anonymous, as for multipart


def test_missing_target_is_404_before_credentials_and_anonymous_write_is_403(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str]
) -> None:
    gone = make_user(devpid_server)
    token = devpid_server.login(*gone)
    r = devpid_server.json("DELETE", f"/{gone[0]}", auth=gone)
    assert r.status_code == 200, r.text
    # the token of a deleted user: the user's absence answers first
    for method, path in (("PUT", f"/{gone[0]}/dev"), ("PATCH", f"/{gone[0]}"),
                         ("DELETE", f"/{gone[0]}/dev")):
        r = devpid_server.json(method, path, auth=(gone[0], token), json={})
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    # anonymous writes: 403 as devpi answers any missing permission (its client expects it)
    stage = make_index(devpid_server, alice, "guarded")
    r = devpid_server.json("PATCH", f"/{alice[0]}", json={"email": "x@example.org"})
    assert (r.status_code, r.reason) == (403, "Forbidden"), r.text
    r = devpid_server.json("PATCH", f"/{stage}", json=["volatile=False"])
    assert r.status_code == 403, r.text
    # bad credentials stay 401 (a typo is noticed), an authenticated stranger gets 403
    r = devpid_server.json("PATCH", f"/{stage}", auth=(alice[0], "typo"), json=[])
    assert r.status_code == 401, r.text
    bob = make_user(devpid_server)
    r = devpid_server.json("PATCH", f"/{stage}", auth=bob, json=["volatile=False"])
    assert r.status_code == 403, r.text
    assert devpid_server.json("GET", f"/{stage}").json()["result"]["volatile"] is True


def test_empty_password_can_be_set_back(start_devpid: Any) -> None:
    """devpi-client's suite changes root's password and then restores the empty one."""
    server: Devpid = start_devpid()
    token = server.login("root", ROOT_PASSWORD)
    r = server.json("PATCH", "/root", auth=("root", token), json={"password": ""})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "userpassword"
    assert server.login("root", "")
    r = server.json("POST", "/+login", json={"user": "root", "password": ROOT_PASSWORD})
    assert r.status_code == 401


def test_password_change_through_the_client(
    devpid_server: Devpid, env: dict[str, str]
) -> None:
    """The client changes a password; the answer carries a fresh token (``userpassword``).

    devpid ends earlier sessions on a password change (devpi-client 7.3 ignores the fresh
    token, so it asks to log in again); the new password works at once.
    """
    user = make_user(devpid_server, password="old-pw")
    client_logged_in(devpid_server, env, user)
    out = devpi(env, "user", "-m", user[0], "password=new-pw")
    assert f"user modified: {user[0]}" in out, out
    client_logged_in(devpid_server, env, (user[0], "new-pw"))
    out = devpi(env, "index", "-c", "after-change")
    assert f"{user[0]}/after-change" in out, out
    r = devpid_server.json("PATCH", f"/{user[0]}", auth=(user[0], "new-pw"),
                           json={"password": "newer-pw"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["type"], body["message"]) == ("userpassword", "user updated, new proxy auth")
    token = body["result"]["password"]
    assert body["result"]["expiration"] > 0
    r = devpid_server.json("PUT", f"/{user[0]}/with-fresh-token", auth=(user[0], token),
                           json={})
    assert r.status_code == 200, r.text


def _bdist_dumb(tmp: Path, name: str, version: str) -> Path:
    src = tmp / "dumb-src" / "usr" / "lib" / f"{name}.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("x = 1\n")
    out = tmp / f"{name}-{version}.linux-x86_64.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tmp / "dumb-src", arcname=".")
    return out


def test_legacy_archive_formats_upload_and_list(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str], tmp_path: Path
) -> None:
    name = "legacy-pkg"
    stage = make_index(devpid_server, alice, "legacy")
    dumb = _bdist_dumb(tmp_path, name, "1.0")
    zipped = make_sdist(tmp_path, name, "1.0", fmt="zip")
    egg = tmp_path / f"{name.replace('-', '_')}-1.0-py3.11.egg"
    egg.write_bytes(make_wheel(tmp_path / "w", name, "1.0").read_bytes())  # a zip, as eggs
    for path, filetype in ((dumb, "bdist_dumb"), (zipped, "sdist"), (egg, "bdist_egg")):
        r = http_upload(devpid_server, alice, stage, path, name=name, version="1.0",
                        extra={"filetype": filetype})
        assert r.status_code == 200, (path.name, r.status_code, r.reason)
    client_logged_in(devpid_server, env, alice, stage)
    out = devpi(env, "list", name)
    for path in (dumb, zipped, egg):
        assert path.name in out, out


def test_upload_only_docs_of_a_path(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str], tmp_path: Path
) -> None:
    stage = make_index(devpid_server, alice, "onlydocs")
    upload_ok(devpid_server, alice, stage, make_wheel(tmp_path, "foo", "1.0"), "foo", "1.0")
    client_logged_in(devpid_server, env, alice, stage)
    empty = tmp_path / "foo-1.0.doc.zip"
    empty.write_bytes(b"")
    out = devpi(env, "upload", "--only-docs", str(empty))
    assert "doc_upload of foo-1.0.doc.zip" in out, out
    data = devpid_server.json("GET", f"/{stage}/foo/1.0").json()["result"]
    assert [link["rel"] for link in data["+links"]].count("doczip") == 1


def test_non_volatile_delete_refusal_names_the_client_option(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str], tmp_path: Path
) -> None:
    stage = make_index(devpid_server, alice, "keep", volatile=False)
    upload_ok(devpid_server, alice, stage, make_wheel(tmp_path, "kept", "1.0"), "kept", "1.0")
    client_logged_in(devpid_server, env, alice, stage)
    out = devpi(env, "remove", "-y", "kept", check=False)
    assert "403" in out and "devpi remove -f" in out and "?force" not in out, out
    out = devpi(env, "remove", "-y", "-f", "kept")
    assert devpid_server.json("GET", f"/{stage}/kept").status_code == 404


def test_mirror_project_json_fetches_upstream(
    devpid_server: Devpid, upstream: FakePyPI, env: dict[str, str], alice: tuple[str, str],
    tmp_path: Path,
) -> None:
    """``devpi list`` on a mirror before any simple page of the project was seen."""
    name = f"mirrored-{alice[0]}"
    upstream.add(make_wheel(tmp_path, name, "1.0"))
    upstream.add(make_wheel(tmp_path, name, "1.1"))
    stage = make_index(devpid_server, ("root", ROOT_PASSWORD), f"mirror-{alice[0]}",
                       type="mirror", mirror_url=upstream.url)  # mirrors are root's to make
    client_logged_in(devpid_server, env, alice, stage)
    out = devpi(env, "list", name)
    assert f"{name.replace('-', '_')}-1.1-py3-none-any.whl" in out, out
    data = devpid_server.json("GET", f"/{stage}/{name}/1.0").json()
    assert data["type"] == "versiondata"
    (link,) = data["result"]["+links"]
    assert link["rel"] == "releasefile"


def test_status_names_the_devpi_server_api_level(
    devpid_server: Devpid, env: dict[str, str]
) -> None:
    import devpid

    devpi(env, "use", devpid_server.url + "/")
    out = devpi(env, "--version")
    assert f"devpi-server {devpid.DEVPI_SERVER_COMPAT}" in out, out
    assert f"devpid {devpid.__version__}" in out, out
    info = devpid_server.json("GET", "/+status").json()["result"]["versioninfo"]
    assert info == {"devpi-server": devpid.DEVPI_SERVER_COMPAT, "devpid": devpid.__version__}


def test_mirror_links_without_hash_use_devpis_layout(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str], tmp_path: Path
) -> None:
    """Hash-less upstream links are served under ``+e/{scheme_host_port_dirs}/`` (spec 4.5);
    a file the upstream lost answers devpi's "error 404 getting URL"."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path / "plain-upstream"
    (root / "simple" / "hashless").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / "hashless-1.0.zip").write_bytes(b"legacy zip bytes")
    (root / "simple" / "index.html").write_text('<a href="hashless/">hashless</a>')
    (root / "simple" / "hashless" / "index.html").write_text(
        '<a href="../../files/hashless-1.0.zip">hashless-1.0.zip</a>'
        '<a href="../../files/hashless-2.0.zip">hashless-2.0.zip</a>')
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        stage = make_index(devpid_server, ("root", ROOT_PASSWORD), f"plain-{alice[0]}",
                           type="mirror", mirror_url=f"http://127.0.0.1:{port}/simple/")
        client_logged_in(devpid_server, env, alice, stage)
        out = devpi(env, "list", "hashless")
        expected = f"{devpid_server.url}/{stage}/+e/http_127.0.0.1_{port}_files/hashless-1.0.zip"
        assert expected in out.split(), out
        r = requests.get(expected, timeout=30)
        assert (r.status_code, r.content) == (200, b"legacy zip bytes")
        r = requests.get(expected.replace("1.0", "2.0"), timeout=30)
        assert r.status_code == 404
        assert f"error 404 getting http://127.0.0.1:{port}/files/hashless-2.0.zip" in (
            r.json()["message"])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_mirror_without_url_mirrors_the_default_upstream(
    devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str]
) -> None:
    """As devpi: ``devpi index -c NAME type=mirror`` alone makes a mirror of the default
    upstream (root/pypi's), which is not contacted until a project is asked for."""
    from devpid.init import default_upstream_url

    client_logged_in(devpid_server, env, ("root", ROOT_PASSWORD))
    name = f"plain-{alice[0]}"
    out = devpi(env, "index", "-c", name, "type=mirror")
    assert f"mirror_url={default_upstream_url()}" in out, out
    out = devpi(env, "use", name)
    assert f"current devpi index: {devpid_server.url}/root/{name}" in out, out
    status = devpid_server.json("GET", "/+status").json()["result"]
    state = status.get("mirrors", {}).get(f"root/{name}", {})
    assert not state.get("last_success") and not state.get("last_failure"), state
