"""Issue 15, item 4: a tour through the API, the web view, search, status, metrics and the
replication routes, as anonymous, as a user and as root: no answer ever contains a password
hash (or its salt), an API token's secret, or a login token other than in /+login's own
answer. The replication feed carries hashes to replicas only (the shared secret's HMAC), and
exports hold token hashes, never token secrets."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import requests

from tests.conftest import ROOT_PASSWORD, Devpid, client_env, run, tool, twine_upload
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import make_index, make_user


def test_no_route_returns_hashes_salts_or_token_secrets(devpid_server: Devpid,
                                                        tmp_path: Path) -> None:
    env = client_env(tmp_path)
    owner = make_user(devpid_server, password="tour-pw")
    stage = make_index(devpid_server, owner, "tour", acl_read=[owner[0]])
    public_stage = make_index(devpid_server, owner, "open")
    project = f"tour-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp_path / "dist", project, "1.0")
    for s in (stage, public_stage):
        twine_upload(f"{devpid_server.url}/{s}/", owner, env, wheel)
    login = devpid_server.login(*owner)
    r = devpid_server.json("POST", f"/{owner[0]}/+tokens", auth=owner,
                           json={"indexes": [stage], "actions": ["read", "upload"]})
    api_token = r.json()["result"]["token"]
    export = tmp_path / "export"
    run([tool("devpid"), "export", "--serverdir", str(devpid_server.serverdir), str(export)],
        env)
    dumped = "\n".join(p.read_text(errors="replace") for p in export.rglob("*.json"))
    hashes = set()
    for line in dumped.replace(",", "\n").splitlines():
        if '"pwhash"' in line:
            hashes.add(line.split('"pwhash"', 1)[1].split('"')[1])
    assert len(hashes) >= 2, "the export should name the users' hashes"
    secrets = {api_token, api_token.split("_", 2)[2], login}
    needles = {h for h in hashes} | {h[7:29] for h in hashes} | secrets  # hash, salt, tokens
    assert api_token.split("_", 2)[2] not in dumped  # exports: token hashes only

    paths = [
        "/", f"/{owner[0]}", f"/{owner[0]}/", "/root", "/+api", f"/{stage}/+api", f"/{stage}",
        f"/{stage}/+simple/", f"/{stage}/+simple/{project}/", f"/{stage}/{project}",
        f"/{stage}/{project}/1.0", f"/{stage}/pypi/{project}/json", f"/{public_stage}",
        f"/{public_stage}/{project}", "/+status", "/+metrics", f"/+search?q={project}",
        f"/{owner[0]}/+tokens", "/+changelog?since=0", "/+changelog/1", "/root/pypi",
    ]
    identities = [None, owner, ("root", ROOT_PASSWORD), (owner[0], login),
                  (owner[0], api_token)]
    seen = 0
    for path in paths:
        for who in identities:
            for accept in ("application/json", "text/html",
                           "application/vnd.pypi.simple.v1+json"):
                r = requests.get(devpid_server.url + path, auth=who,
                                 headers={"Accept": accept})
                answer = r.text + json.dumps(dict(r.headers))
                for needle in needles:
                    assert needle not in answer, (path, who and who[0], accept, r.status_code)
                assert "$2b$" not in answer and '"pwhash"' not in answer, (path, accept)
                seen += r.status_code == 200
    assert seen > 50
    # the changelog (it carries hashes, for replicas to check logins) is for replicas only
    for who in identities:
        assert requests.get(devpid_server.url + "/+changelog?since=0",
                            auth=who).status_code == 403
