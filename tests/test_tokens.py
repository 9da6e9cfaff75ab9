"""Issue 15, item 2: scoped API tokens minted with ``devpid token create`` or the REST API,
used as the Basic-auth password by real twine, pip and uv, limited to their indexes and
actions, listed without secrets, revoked, and ended by a password change or user deletion."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import requests

from tests.conftest import Devpid, client_env, run, tool, twine_upload
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import make_index, make_user, pip_download, uv_install


def cli_token(server: Devpid, env: dict[str, str], user: tuple[str, str], *args: str) -> str:
    proc = run([tool("devpid"), "token", "--url", server.url, "--user", user[0],
                "--password", user[1], "create", *args], env)
    token = proc.stdout.strip()
    assert token.startswith("devpidt1_"), proc.stdout + proc.stderr
    return token


def api_token(server: Devpid, user: tuple[str, str], **body: object) -> str:
    r = server.json("POST", f"/{user[0]}/+tokens", auth=user, json=body)
    assert r.status_code == 201, r.text
    token: str = r.json()["result"]["token"]
    return token


def test_cli_token_uploads_with_twine_and_installs_with_pip_and_uv(
        devpid_server: Devpid, tmp_path: Path) -> None:
    env = client_env(tmp_path)
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "ci", acl_read=[owner[0]])
    other_stage = make_index(devpid_server, owner, "other", acl_read=[owner[0]])
    token = cli_token(devpid_server, env, owner, "--index", stage, "--action", "read",
                      "--action", "upload", "--expires", "1h", "--description", "CI")
    project = f"tok-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp_path / "dist", project, "1.0")
    twine_upload(f"{devpid_server.url}/{stage}/", (owner[0], token), env, wheel)
    index = f"{devpid_server.url}/{stage}/+simple/".replace(
        "://", f"://{owner[0]}:{token}@", 1)
    names, _ = pip_download(client_env(tmp_path / "pip"), index, project)
    assert names == [wheel.name]
    installed, _ = uv_install(client_env(tmp_path / "uv"), index, project)
    assert len(installed) == 1
    # outside its scope: another index, another action, managing the user or tokens
    wheel2 = make_wheel(tmp_path / "dist2", project, "2.0")
    proc = run([tool("twine"), "upload", "--non-interactive", "--repository-url",
                f"{devpid_server.url}/{other_stage}/", "-u", owner[0], "-p", token,
                str(wheel2)], env, check=False)
    assert proc.returncode != 0 and "403" in proc.stdout + proc.stderr
    auth = (owner[0], token)
    assert requests.get(f"{devpid_server.url}/{other_stage}/+simple/",
                        auth=auth).status_code == 403
    assert devpid_server.json("DELETE", f"/{stage}/{project}/1.0", auth=auth).status_code == 403
    assert devpid_server.json("PATCH", f"/{owner[0]}", auth=auth,
                              json={"password": "x"}).status_code == 403
    assert devpid_server.json("POST", f"/{owner[0]}/+tokens", auth=auth,
                              json={"indexes": [stage]}).status_code == 403
    assert devpid_server.json("DELETE", f"/{stage}", auth=auth).status_code == 403
    # a read-only token cannot upload
    read_only = api_token(devpid_server, owner, indexes=[stage], actions=["read"])
    proc = run([tool("twine"), "upload", "--non-interactive", "--repository-url",
                f"{devpid_server.url}/{stage}/", "-u", owner[0], "-p", read_only,
                str(wheel2)], env, check=False)
    assert proc.returncode != 0 and "403" in proc.stdout + proc.stderr


def test_list_revoke_and_only_a_hash_is_stored(devpid_server: Devpid) -> None:
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "x", acl_read=[owner[0]])
    token = api_token(devpid_server, owner, indexes=[stage], actions=["read", "delete"],
                      expires_in=600)
    listed = devpid_server.json("GET", f"/{owner[0]}/+tokens", auth=owner).json()["result"]
    assert len(listed) == 1 and set(listed[0]) == {
        "id", "created", "expires", "indexes", "actions", "description"}
    secret = token.split("_", 2)[2]  # devpidt1_<id>_<secret>
    assert len(secret) == 43
    for path in (devpid_server.serverdir).rglob("*"):
        if path.is_file() and "+blobs" not in path.parts:
            assert secret.encode() not in path.read_bytes(), path
    assert devpid_server.json("GET", f"/{owner[0]}/+tokens").status_code == 401
    stranger = make_user(devpid_server)
    assert devpid_server.json("GET", f"/{owner[0]}/+tokens", auth=stranger).status_code == 403
    auth = (owner[0], token)
    assert requests.get(f"{devpid_server.url}/{stage}/+simple/", auth=auth).ok
    # a token never lists (or mints) tokens
    assert devpid_server.json("GET", f"/{owner[0]}/+tokens", auth=auth).status_code == 403
    r = devpid_server.json("DELETE", f"/{owner[0]}/+tokens/{listed[0]['id']}", auth=owner)
    assert r.ok, r.text
    assert requests.get(f"{devpid_server.url}/{stage}/+simple/", auth=auth).status_code == 401


def test_token_dies_with_password_change_deletion_and_expiry(devpid_server: Devpid) -> None:
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "x", acl_read=[owner[0]])
    url = f"{devpid_server.url}/{stage}/+simple/"
    token = api_token(devpid_server, owner, indexes=[stage])
    assert requests.get(url, auth=(owner[0], token)).ok
    assert devpid_server.json("PATCH", f"/{owner[0]}", auth=owner,
                              json={"password": "new"}).ok
    assert requests.get(url, auth=(owner[0], token)).status_code == 401
    owner = (owner[0], "new")
    token = api_token(devpid_server, owner, indexes=[stage])
    short = api_token(devpid_server, owner, indexes=[stage], expires_in=1)
    time.sleep(1.2)
    assert requests.get(url, auth=(owner[0], short)).status_code == 401
    assert devpid_server.json("DELETE", f"/{owner[0]}", auth=owner).ok
    make_user(devpid_server, owner[0], "new")  # the same name and password again
    r = devpid_server.json("GET", f"/{owner[0]}/+tokens", auth=(owner[0], token))
    assert r.status_code == 401


def test_bad_token_requests_are_clear_400s(devpid_server: Devpid) -> None:
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "x")
    for body in ({"indexes": [stage], "expires_in": 0}, {"indexes": [stage], "actions": ["fly"]},
                 {"indexes": []}, {"indexes": ["no/such"]}, {"indexes": [stage], "x": 1}, [1]):
        r = devpid_server.json("POST", f"/{owner[0]}/+tokens", auth=owner, json=body)
        assert r.status_code == 400 and r.json()["message"], (body, r.text)
    private = make_index(devpid_server, owner, "p", acl_read=[owner[0]])
    r = requests.get(f"{devpid_server.url}/{private}/+simple/",
                     auth=(owner[0], "devpidt1_0123456789abcdef_" + "A" * 43))
    assert r.status_code == 401


def test_a_push_with_a_token_writes_only_to_the_tokens_indexes(
        devpid_server: Devpid, tmp_path: Path) -> None:
    """A push is a request to the source index that writes to ``targetindex`` (from its
    body): a token for the source alone may not copy releases into another index."""
    env = client_env(tmp_path)
    owner = make_user(devpid_server)
    src = make_index(devpid_server, owner, "src")
    dst = make_index(devpid_server, owner, "dst")
    project = f"tokpush-{uuid.uuid4().hex[:6]}"
    twine_upload(f"{devpid_server.url}/{src}/", owner, env,
                 make_wheel(tmp_path / "dist", project, "1.0"))
    body = {"name": project, "version": "1.0", "targetindex": dst}
    narrow = api_token(devpid_server, owner, indexes=[src], actions=["read", "upload"],
                       expires_in=600)
    r = devpid_server.json("PUSH", f"/{src}", auth=(owner[0], narrow), json=body)
    assert r.status_code == 403 and dst in r.json()["message"], r.text
    assert requests.get(f"{devpid_server.url}/{dst}/+simple/{project}/").status_code == 404
    both = api_token(devpid_server, owner, indexes=[src, dst], actions=["read", "upload"],
                     expires_in=600)
    r = devpid_server.json("PUSH", f"/{src}", auth=(owner[0], both), json=body)
    assert r.status_code == 200, r.text


def test_expired_tokens_are_dropped_and_do_not_count(devpid_server: Devpid) -> None:
    """A CI job minting a token a day must not reach the per-user limit with dead ones."""
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "exp")
    api_token(devpid_server, owner, indexes=[stage], actions=["read"], expires_in=1)
    time.sleep(1.5)
    api_token(devpid_server, owner, indexes=[stage], actions=["read"], expires_in=600)
    listed = devpid_server.json("GET", f"/{owner[0]}/+tokens", auth=owner).json()["result"]
    assert len(listed) == 1 and listed[0]["expires"] > time.time(), listed
