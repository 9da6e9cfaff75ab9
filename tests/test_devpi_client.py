"""The real devpi-client 7.x drives users, login and indexes on the real daemon."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT_PASSWORD, Devpid, run, tool
from tests.support.fakepypi import FakePyPI


def devpi(env: dict[str, str], *args: str, check: bool = True) -> str:
    proc = run([tool("devpi"), *args], env, check=check)
    return proc.stdout + proc.stderr


def test_devpi_client_session(devpid_server: Devpid, env: dict[str, str], unique: str) -> None:
    alice, bob = f"alice{unique}", f"bob{unique}"
    devpi(env, "use", devpid_server.url + "/")
    out = devpi(env, "login", "root", "--password", ROOT_PASSWORD)
    assert "logged in 'root'" in out
    out = devpi(env, "user", "-c", alice, "password=alicepw", "email=alice@example.org")
    assert f"user created: {alice}" in out
    devpi(env, "user", "-c", bob, "password=bobpw")
    out = devpi(env, "login", alice, "--password", "alicepw")
    assert f"logged in '{alice}'" in out

    out = devpi(env, "index", "-c", "dev", "bases=root/pypi", "volatile=False")
    assert "bases=root/pypi" in out and "volatile=False" in out
    out = devpi(env, "index", "-l")
    assert f"{alice}/dev" in out
    out = devpi(env, "index", "dev", "acl_upload=" + f"{alice},{bob}")
    assert f"acl_upload={alice},{bob}" in out

    out = devpi(env, "getjson", f"/{alice}/dev")
    data = json.loads(out[out.index("{") :])
    assert data["type"] == "indexconfig"
    assert data["result"]["bases"] == ["root/pypi"]
    assert data["result"]["volatile"] is False
    assert data["result"]["acl_upload"] == [alice, bob]

    out = devpi(env, "user", "-m", alice, "email=new@example.org")
    assert "user modified" in out
    user = devpid_server.json("GET", f"/{alice}", auth=("root", "root-secret")).json()["result"]
    assert user["email"] == "new@example.org"
    assert "email" not in devpid_server.json("GET", f"/{alice}").json()["result"]  # private
    assert "pwhash" not in user and "password" not in user

    # list form of PATCH: += and -=
    out = devpi(env, "index", "dev", f"acl_upload-={bob}")
    assert f"acl_upload={alice}\n" in out

    devpi(env, "index", "-c", "scratch")
    out = devpi(env, "index", "--delete", "-y", "scratch")
    assert "index deleted" in out
    assert devpid_server.json("GET", f"/{alice}/scratch").status_code == 404

    out = devpi(env, "use", f"{alice}/dev")
    assert f"{alice}/dev" in out
    out = devpi(env, "logoff")
    assert "login information deleted" in out
    # after logoff, reads still work anonymously and writes are refused by the server
    out = devpi(env, "getjson", f"/{alice}/dev")
    assert '"indexconfig"' in out
    r = devpid_server.json("PATCH", f"/{alice}/dev", json=["volatile=True"])
    assert r.status_code == 403
    assert devpid_server.json("GET", f"/{alice}/dev").json()["result"]["volatile"] is False


def test_devpi_use_list_and_user_list(devpid_server: Devpid, env: dict[str, str],
                                      alice: tuple[str, str]) -> None:
    devpi(env, "use", devpid_server.url + "/")
    out = devpi(env, "user", "-l")
    assert alice[0] in out and "root" in out
    out = devpi(env, "use", "-l")
    assert "root/pypi" in out


def test_devpi_version_reads_status(devpid_server: Devpid, env: dict[str, str]) -> None:
    devpi(env, "use", devpid_server.url + "/")
    out = devpi(env, "--version")
    assert "devpid" in out


def test_devpi_patchjson_refresh_and_logout(
    devpid_server: Devpid, upstream: FakePyPI, env: dict[str, str], alice: tuple[str, str],
    tmp_path: Path,
) -> None:
    """The devpi-client commands not driven elsewhere: patchjson, refresh, logout."""
    from tests.support.pkgbuild import make_wheel
    from tests.test_private_index import make_index

    name = f"refreshed-{alice[0]}"
    upstream.add(make_wheel(tmp_path / "up", name, "1.0"))

    stage = make_index(devpid_server, alice, "pj", bases=["root/pypi"])
    devpi(env, "use", devpid_server.url + "/")
    devpi(env, "login", alice[0], "--password", alice[1])
    devpi(env, "use", stage)
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"title": "patched by devpi patchjson"}))
    devpi(env, "patchjson", f"/{stage}", str(patch))
    config = devpid_server.json("GET", f"/{stage}").json()["result"]
    assert config["title"] == "patched by devpi patchjson"
    patch.write_text(json.dumps({"volatile": "sometimes"}))
    out = devpi(env, "patchjson", f"/{stage}", str(patch), check=False)
    assert "400" in out or "volatile" in out, out  # the server's refusal, shown by the client
    assert devpid_server.json("GET", f"/{stage}").json()["result"]["volatile"] is True
    assert devpid_server.json("GET", f"/{stage}/+simple/{name}/").status_code == 200
    upstream.add(make_wheel(tmp_path / "up", name, "2.0"))  # new upstream release
    out = devpi(env, "refresh", name)
    assert f"Refreshed {name}" in out and "Couldn't" not in out, out
    page = devpid_server.json("GET", f"/{stage}/+simple/{name}/").text
    assert f"{name.replace('-', '_')}-2.0-py3-none-any.whl" in page
    out = devpi(env, "refresh", "no-such-project-anywhere")
    assert "404" in out  # the client reports the server's answer
    out = devpi(env, "logout")
    assert "login information deleted" in out
