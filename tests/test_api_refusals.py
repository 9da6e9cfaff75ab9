"""Bad input and forbidden writes get a clear 4xx JSON message and change nothing."""

from __future__ import annotations

import base64

import requests

from tests.conftest import ROOT_PASSWORD, Devpid


def snapshot(server: Devpid) -> tuple[int, dict[str, object]]:
    r = server.json("GET", "/")
    return int(r.headers["X-Devpi-Serial"]), r.json()["result"]


def assert_json_error(r: requests.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json"
    message = r.json()["message"]
    assert fragment in message, message


def test_wrong_password_and_unknown_user(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    before = snapshot(devpid_server)
    r = devpid_server.json("POST", "/+login", json={"user": alice[0], "password": "wrong"})
    assert_json_error(r, 401, "could not be authenticated")
    r = devpid_server.json("POST", "/+login", json={"user": "nobody-here", "password": "x"})
    assert_json_error(r, 401, "could not be authenticated")
    r = devpid_server.json("POST", "/+login", data=b"{not json")
    assert_json_error(r, 400, "could not decode json")
    r = devpid_server.json("POST", "/+login", json={"user": "x"})
    assert_json_error(r, 400, "no user/password")
    # Basic auth with a wrong password is refused, not treated as anonymous
    r = devpid_server.json("PUT", f"/{alice[0]}/x", auth=(alice[0], "wrong"), json={})
    assert_json_error(r, 401, "could not be authenticated")
    assert snapshot(devpid_server) == before


def test_forged_and_expired_tokens(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    name, password = alice
    token = devpid_server.login(name, password)
    good = base64.b64encode(f"{name}:{token}".encode()).decode()
    r = devpid_server.json("PUT", f"/{name}/tok", headers={"X-Devpi-Auth": good}, json={})
    assert r.status_code == 200, r.text
    forged_token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    forged = base64.b64encode(f"{name}:{forged_token}".encode()).decode()
    r = devpid_server.json("PUT", f"/{name}/forged", headers={"X-Devpi-Auth": forged}, json={})
    assert_json_error(r, 401, "expired or invalid")
    # a token of alice does not authenticate root
    as_root = base64.b64encode(f"root:{token}".encode()).decode()
    r = devpid_server.json("PUT", "/root/forged", headers={"X-Devpi-Auth": as_root}, json={})
    assert r.status_code == 401
    # changing the password revokes earlier tokens
    r = devpid_server.json("PATCH", f"/{name}", auth=(name, password),
                           json={"password": "changed-pw"})
    assert r.status_code == 200 and r.json()["type"] == "userpassword"
    r = devpid_server.json("PUT", f"/{name}/again", headers={"X-Devpi-Auth": good}, json={})
    assert_json_error(r, 401, "expired or invalid")
    assert devpid_server.json("GET", f"/{name}/forged").status_code == 404


def test_expired_token_is_refused(start_devpid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tokens carry an expiry; a token past it no longer authenticates."""
    from devpid.auth import TokenSigner

    server = start_devpid()
    secret = (server.serverdir / ".secret").read_bytes()
    record = server.json("GET", "/root").json()["result"]
    assert "pwhash" not in record

    class Past:
        @staticmethod
        def seconds() -> float:
            return 1_000_000.0

    # issue a token that expired long ago, signed with the real secret
    from devpid.store import open_store

    store, _ = open_store(server.serverdir, readonly=True)
    pwhash = store.get("user/root")["pwhash"]
    store.close()
    token = TokenSigner(secret, clock=Past).issue("root", pwhash, lifetime=10)
    header = base64.b64encode(f"root:{token}".encode()).decode()
    r = server.json("PUT", "/root/late", headers={"X-Devpi-Auth": header}, json={})
    assert_json_error(r, 401, "expired or invalid")
    fresh = TokenSigner(secret).issue("root", pwhash)
    header = base64.b64encode(f"root:{fresh}".encode()).decode()
    assert server.json("PUT", "/root/ok", headers={"X-Devpi-Auth": header}, json={}).ok


def test_alice_cannot_touch_bobs_index(devpid_server: Devpid, unique: str) -> None:
    alice, bob = f"a{unique}", f"b{unique}"
    for name in (alice, bob):
        assert devpid_server.json("PUT", f"/{name}", json={"password": "pw"}).status_code == 201
    assert devpid_server.json("PUT", f"/{bob}/dev", auth=(bob, "pw"), json={}).ok
    before = snapshot(devpid_server)
    r = devpid_server.json("PATCH", f"/{bob}/dev", auth=(alice, "pw"), json=["volatile=False"])
    assert_json_error(r, 403, "no permission")
    r = devpid_server.json("DELETE", f"/{bob}/dev", auth=(alice, "pw"))
    assert_json_error(r, 403, "no permission")
    r = devpid_server.json("PUT", f"/{bob}/other", auth=(alice, "pw"), json={})
    assert_json_error(r, 403, "no permission")
    r = devpid_server.json("PATCH", f"/{bob}", auth=(alice, "pw"), json={"email": "x@y"})
    assert_json_error(r, 403, "no permission")
    r = devpid_server.json("DELETE", f"/{bob}", auth=(alice, "pw"))
    assert_json_error(r, 403, "no permission")
    # anonymous: 403 as devpi's JSON API answers any missing permission (devpi-client
    # expects it); 401 is for bad credentials and the upload protocol
    r = devpid_server.json("PATCH", f"/{bob}/dev", json=["volatile=False"])
    assert_json_error(r, 403, "authentication required")
    assert snapshot(devpid_server) == before


def test_index_validation(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    name, pw = alice
    auth = (name, pw)
    assert devpid_server.json("PUT", f"/{name}/a", auth=auth, json={}).ok
    assert devpid_server.json("PUT", f"/{name}/b", auth=auth, json={"bases": f"{name}/a"}).ok
    before = snapshot(devpid_server)
    r = devpid_server.json("PUT", f"/{name}/c", auth=auth, json={"frobnicate": "1"})
    assert_json_error(r, 400, "unexpected keyword arguments: frobnicate=1")
    r = devpid_server.json("PATCH", f"/{name}/a", auth=auth, json=[f"bases={name}/b"])
    assert_json_error(r, 400, "cycle")
    r = devpid_server.json("PATCH", f"/{name}/a", auth=auth, json=[f"bases={name}/a"])
    assert_json_error(r, 400, "cycle")
    r = devpid_server.json("PUT", f"/{name}/c", auth=auth, json={"bases": "nobody/none"})
    assert_json_error(r, 400, "does not exist")
    r = devpid_server.json("PUT", f"/{name}/c", auth=auth, json={"bases": "nonsense"})
    assert_json_error(r, 400, "invalid base index spec")
    r = devpid_server.json("PUT", f"/{name}/c", auth=auth, json={"volatile": "maybe"})
    assert_json_error(r, 400, "Unknown boolean value")
    r = devpid_server.json("PUT", f"/{name}/c", auth=auth, json={"type": "weird"})
    assert_json_error(r, 400, "unknown index type")
    r = devpid_server.json("PATCH", f"/{name}/a", auth=auth, json={"type": "mirror"})
    assert_json_error(r, 400, "can't be changed")
    r = devpid_server.json("PUT", f"/{name}/a", auth=auth, json={})
    assert_json_error(r, 409, "exists")
    r = devpid_server.json("PUT", f"/{name}/bad%20name", auth=auth, json={})
    assert_json_error(r, 400, "invalid")
    r = devpid_server.json("PATCH", f"/{name}/a", auth=auth, data=b"[broken")
    assert_json_error(r, 400, "could not decode json")
    r = devpid_server.json("DELETE", f"/{name}/a", auth=auth)
    assert_json_error(r, 403, "base of")
    assert snapshot(devpid_server) == before


def test_user_validation(devpid_server: Devpid, alice: tuple[str, str]) -> None:
    before = snapshot(devpid_server)
    r = devpid_server.json("PUT", f"/{alice[0]}", json={"password": "x"})
    assert_json_error(r, 409, "already exists")
    r = devpid_server.json("PUT", "/new-user-x", json={"email": "x"})
    assert_json_error(r, 400, "password needs to be set")
    r = devpid_server.json("PUT", "/new-user-x", json={"password": "x", "admin": True})
    assert_json_error(r, 400, "Unknown keys")
    r = devpid_server.json("PUT", "/bad%3Aname", json={"password": "x"})
    assert_json_error(r, 400, "invalid")
    r = devpid_server.json("DELETE", "/root", auth=("root", ROOT_PASSWORD))
    assert_json_error(r, 403, "no permission")
    assert snapshot(devpid_server) == before


def test_global_headers_and_api(devpid_server: Devpid) -> None:
    r = requests.get(devpid_server.url + "/+api")
    assert r.headers["X-Devpi-Api-Version"] == "2"
    assert r.headers["X-Devpi-Uuid"] == r.headers["X-Devpi-Primary-Uuid"]
    assert int(r.headers["X-Devpi-Serial"]) >= 0
    result = r.json()["result"]
    assert result["login"] == devpid_server.url.replace("127.0.0.1", "127.0.0.1") + "/+login"
    assert "server-keyvalue-parsing" in result["features"]
    r = requests.get(devpid_server.url + "/root/pypi/+api")
    assert r.json()["result"]["simpleindex"].endswith("/root/pypi/+simple/")
    assert "pypisubmit" not in r.json()["result"]
    r = requests.get(devpid_server.url + "/nobody/none/+api")
    assert_json_error(r, 404, "could not be found")
    r = requests.get(devpid_server.url + "/+status")
    assert r.json()["result"]["role"] == "MASTER"
    # outside URL from a proxy header
    r = requests.get(devpid_server.url + "/+api",
                     headers={"X-Outside-Url": "https://pkgs.example.test/sub"})
    assert r.json()["result"]["login"] == "https://pkgs.example.test/sub/+login"


def test_deep_big_and_non_standard_json_is_a_400(devpid_server: Devpid,
                                                 alice: tuple[str, str]) -> None:
    """Issue 19: JSON nested ~1,000 deep was a RecursionError 500; nesting and size of any
    user-supplied JSON are bounded, and NaN/Infinity (not JSON) are refused."""
    name = alice[0]
    r = devpid_server.json("PUT", f"/{name}/deep", auth=alice, json={})
    assert r.status_code == 200, r.text
    before = snapshot(devpid_server)

    def config(custom: str) -> str:
        return '{"custom_data": ' + custom + ', "password": "x"}'

    bodies = {
        "nested 1000": (config("[" * 1000 + "]" * 1000), "nested deeper"),
        "nested 25": (config("[" * 25 + "]" * 25), "nested deeper"),
        "too big": (config('"' + "x" * (1024 * 1024 + 1) + '"'), "larger than"),
        "NaN": (config("NaN"), "could not decode"),
        "Infinity": (config("[Infinity]"), "could not decode"),
    }
    routes = [
        ("PUT", f"/newuser{name}"),
        ("POST", "/+login"),
        ("PATCH", f"/{name}"),
        ("PUT", f"/{name}/other"),
        ("PATCH", f"/{name}/deep"),
        ("POST", f"/{name}/deep/some-pkg/1.0/+yank"),
        ("POST", f"/{name}/deep"),  # push
    ]
    headers = {"Content-Type": "application/json"}
    for label, (body, fragment) in bodies.items():
        for method, path in routes:
            r = devpid_server.json(method, path, auth=alice, data=body.encode(), headers=headers)
            assert r.status_code == 400, (label, method, path, r.status_code, r.text[:200])
            assert_json_error(r, 400, fragment)
    assert snapshot(devpid_server) == before
    # moderate nesting is fine
    ok = {"custom_data": {"a": [[{"b": [1, 2, {"c": None}]}]]}}
    r = devpid_server.json("PATCH", f"/{name}", auth=alice, json=ok)
    assert r.status_code == 200, r.text
    assert devpid_server.json("GET", f"/{name}").json()["result"]["custom_data"] == ok[
        "custom_data"]


def test_non_finite_numbers_stored_before_strict_input_read_as_null(start_devpid) -> None:  # type: ignore[no-untyped-def]
    """Input refuses NaN/Infinity now, but a server upgraded from before may hold them:
    its listings still answer (strict JSON, the values as null), never a 500."""
    from devpid.store import open_store

    server = start_devpid()
    server.stop()
    store, _ = open_store(server.serverdir)
    with store.transaction() as tx:
        tx.set("user/oldnan", {"pwhash": "", "created": "2026",
                               "custom_data": {"ratio": float("nan"), "big": float("inf")}})
    store.close()
    server.start()
    for path in ("/", "/oldnan"):
        r = server.json("GET", path)
        assert r.status_code == 200, r.text
        assert "NaN" not in r.text and "Infinity" not in r.text
    assert server.json("GET", "/oldnan").json()["result"]["custom_data"] == {
        "ratio": None, "big": None}
