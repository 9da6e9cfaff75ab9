"""devpi-server's JSON shapes (spec: users 1.14, indexes 1.7, +api 1.4, push 1.10), read back
through the real devpi client's ``getjson`` and checked key by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ROOT_PASSWORD, Devpid
from tests.support.fakepypi import FakePyPI
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import devpi, make_index, upload_ok


def getjson(env: dict[str, str], path: str) -> dict[str, Any]:
    out = devpi(env, "getjson", path)
    data: dict[str, Any] = json.loads(out[out.index("{"):])
    return data


def test_user_shapes(devpid_server: Devpid, env: dict[str, str], unique: str) -> None:
    name = f"shape{unique}"
    r = devpid_server.json("PUT", f"/{name}", json={"password": "pw", "email": "s@example.org",
                                                    "title": "T"})
    assert r.status_code == 201
    created = r.json()
    assert created["type"] == "userconfig"
    assert set(created["result"]) == {"username", "email", "title", "created", "indexes"}
    devpi(env, "use", devpid_server.url + "/")
    devpi(env, "login", name, "--password", "pw")
    devpi(env, "index", "-c", "dev")
    user = getjson(env, f"/{name}")
    assert user["type"] == "userconfig"
    result = user["result"]
    assert result["username"] == name and result["email"] == "s@example.org"
    assert not {"pwhash", "pwsalt", "password"} & set(result)
    assert list(result["indexes"]) == ["dev"]
    assert result["indexes"]["dev"]["type"] == "stage"
    assert result["created"].endswith("Z") and "modified" not in result
    everyone = getjson(env, "/")
    assert everyone["type"] == "list:userconfig"
    mine = everyone["result"][name]
    assert mine["username"] == name and "dev" in mine["indexes"]
    assert all("pwhash" not in u for u in everyone["result"].values())
    # PATCH without a password: only a message; a falsy value drops the key
    r = devpid_server.json("PATCH", f"/{name}", auth=(name, "pw"), json={"title": ""})
    assert r.status_code == 200 and r.json() == {"message": "user updated"}
    result = getjson(env, f"/{name}")["result"]
    assert "title" not in result and "modified" in result
    r = devpid_server.json("DELETE", f"/{name}", auth=(name, "pw"))
    assert r.json() == {"message": f"user '{name}' deleted"}


def test_index_shapes(devpid_server: Devpid, env: dict[str, str],
                      alice: tuple[str, str], tmp_path: Path) -> None:
    stage = make_index(devpid_server, alice, "shapes")
    upload_ok(devpid_server, alice, stage, make_wheel(tmp_path, "shaped", "1.0"), "shaped",
              "1.0")
    devpi(env, "use", devpid_server.url + "/")
    data = getjson(env, f"/{stage}")
    assert data["type"] == "indexconfig"
    result = data["result"]
    assert {"type", "bases", "volatile", "acl_upload", "acl_toxresult_upload",
            "mirror_whitelist", "projects"} <= set(result)
    assert result["type"] == "stage" and result["bases"] == [] and result["volatile"] is True
    assert result["acl_upload"] == [alice[0]] and result["projects"] == ["shaped"]
    assert "projects" not in getjson(env, f"/{stage}?no_projects=")["result"]
    # create answers 200 (not 201) with the config; delete answers 201 with a message
    r = devpid_server.json("PUT", f"/{alice[0]}/gone", auth=alice, json={})
    assert r.status_code == 200 and r.json()["type"] == "indexconfig"
    assert "projects" not in r.json()["result"]
    r = devpid_server.json("DELETE", f"/{alice[0]}/gone", auth=alice)
    assert (r.status_code, r.json()) == (201, {"message": f"index {alice[0]}/gone deleted"})


def test_api_shapes(devpid_server: Devpid, env: dict[str, str], alice: tuple[str, str],
                    upstream: FakePyPI) -> None:
    stage = make_index(devpid_server, alice, "apis")
    mirror = make_index(devpid_server, ("root", ROOT_PASSWORD), f"apimirror-{alice[0]}",
                        type="mirror", mirror_url=upstream.url)  # root's to make
    base = devpid_server.url
    devpi(env, "use", base + "/")
    root_api = getjson(env, "/+api")
    assert root_api["type"] == "apiconfig"
    assert root_api["result"]["login"] == f"{base}/+login"
    assert root_api["result"]["authstatus"] == ["noauth", "", []]
    assert "server-keyvalue-parsing" in root_api["result"]["features"]
    assert not {"index", "simpleindex", "pypisubmit"} & set(root_api["result"])
    devpi(env, "login", alice[0], "--password", alice[1])
    index_api = getjson(env, f"/{stage}/+api")["result"]
    assert index_api["authstatus"] == ["ok", alice[0], []]
    assert index_api["index"] == f"{base}/{stage}"
    assert index_api["simpleindex"] == f"{base}/{stage}/+simple/"
    assert index_api["pypisubmit"] == f"{base}/{stage}/"
    mirror_api = getjson(env, f"/{mirror}/+api")["result"]
    assert mirror_api["simpleindex"] == f"{base}/{mirror}/+simple/"
    assert "pypisubmit" not in mirror_api
    assert getjson(env, f"/{alice[0]}/+api")["result"]["login"] == f"{base}/+login"


def test_push_actionlog_shape(devpid_server: Devpid, env: dict[str, str],
                              alice: tuple[str, str], tmp_path: Path) -> None:
    src = make_index(devpid_server, alice, "pushsrc")
    dst = make_index(devpid_server, alice, "pushdst")
    upload_ok(devpid_server, alice, src, make_wheel(tmp_path, "pushed", "1.0"), "pushed", "1.0")
    devpi(env, "use", devpid_server.url + "/")
    devpi(env, "login", alice[0], "--password", alice[1])
    devpi(env, "use", src)
    out = devpi(env, "push", "pushed==1.0", dst)
    assert f"200 register pushed 1.0 -> {dst}" in out, out
    r = devpid_server.json("PUSH", f"/{src}", auth=alice, json={
        "name": "pushed", "version": "1.0", "targetindex": dst})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "actionlog"
    register, store = body["result"]
    assert register == [200, "register", "pushed", "1.0", "->", dst]
    assert store[:2] == [200, "store_releasefile"]
    assert store[2].startswith(f"{dst}/+f/") and store[2].endswith("-1.0-py3-none-any.whl")
    links = getjson(env, f"/{dst}/pushed/1.0")["result"]["+links"]
    assert [e["what"] for e in links[0]["log"]] == ["overwrite", "upload", "push"]
    assert links[0]["log"][-1] == {**links[0]["log"][-1], "what": "push", "src": src,
                                   "dst": dst, "who": alice[0]}
