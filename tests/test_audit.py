"""Issue 15, item 3: every write request lands in the audit log (who, from where, what, the
serial) that ``devpid audit`` shows; wrong passwords are counted in /+metrics."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import requests

from tests.conftest import Devpid, client_env, run, tool, twine_upload
from tests.support.pkgbuild import make_wheel
from tests.support.polling import wait_for
from tests.test_private_index import make_index, make_user


def audit(server: Devpid, env: dict[str, str], *args: str) -> list[dict[str, object]]:
    proc = run([tool("devpid"), "audit", "--serverdir", str(server.serverdir), "--json",
                *args], env)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_writes_are_audited_with_who_where_what_and_serial(devpid_server: Devpid,
                                                           tmp_path: Path) -> None:
    env = client_env(tmp_path)
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "dev")
    project = f"aud-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp_path / "dist", project, "1.0")
    twine_upload(f"{devpid_server.url}/{stage}/", owner, env, wheel)
    assert devpid_server.json("DELETE", f"/{stage}/{project}/1.0", auth=owner).ok
    refused = devpid_server.json("DELETE", f"/{stage}", auth=make_user(devpid_server))
    assert refused.status_code == 403
    mine = wait_for(lambda: len(audit(devpid_server, env, "--user", owner[0])) >= 3 and
                    audit(devpid_server, env, "--user", owner[0]), what="audit rows")
    what = [(e["method"], e["path"], e["code"]) for e in mine]
    assert what == [("PUT", f"/{stage}", 200), ("POST", f"/{stage}/", 200),
                    ("DELETE", f"/{stage}/{project}/1.0", 200)], what
    assert all(e["address"] == "127.0.0.1" and isinstance(e["serial"], int) for e in mine)
    assert mine[0]["serial"] < mine[1]["serial"] < mine[2]["serial"]
    everyone = audit(devpid_server, env, "--since-serial", str(mine[0]["serial"]))
    assert ("PUT", f"/{owner[0]}") not in [(e["method"], e["path"]) for e in everyone]
    assert wait_for(lambda: any(e["path"] == f"/{stage}" and e["code"] == 403 for e in
                                audit(devpid_server, env, "--limit", "20")))
    text = run([tool("devpid"), "audit", "--serverdir", str(devpid_server.serverdir),
                "--user", owner[0]], env).stdout
    assert f"{owner[0]} 127.0.0.1 DELETE /{stage}/{project}/1.0 200 serial=" in text
    assert (devpid_server.serverdir / "audit.sqlite").stat().st_mode & 0o077 == 0


def failures(server: Devpid) -> int:
    text = requests.get(server.url + "/+metrics").text
    match = re.search(r"^devpid_login_failures_total (\d+)", text, re.M)
    assert match, text
    return int(match.group(1))


def test_failed_logins_are_counted_in_metrics(devpid_server: Devpid) -> None:
    owner = make_user(devpid_server)
    stage = make_index(devpid_server, owner, "m", acl_read=[owner[0]])
    before = failures(devpid_server)
    assert requests.post(devpid_server.url + "/+login",
                         json={"user": owner[0], "password": "wrong"}).status_code == 401
    assert requests.get(f"{devpid_server.url}/{stage}/+simple/",
                        auth=(owner[0], "wrong")).status_code == 401
    assert requests.get(f"{devpid_server.url}/{stage}/+simple/",
                        auth=("nobody-" + uuid.uuid4().hex[:6], "x")).status_code == 401
    assert failures(devpid_server) >= before + 3
