"""Issue 15, item 4: ``--status-acl`` restricts ``/+status`` and ``/+metrics`` (the server's
internals) to root and the listed users or ``:AUTHENTICATED:``: 401 with a Basic challenge
without credentials, 403 with someone else's, direct, through the fast front door's keep-alive
connections and behind the generated nginx. ``/+api`` stays open (clients need it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import requests

from devpid.genconfig import GenConfigOptions, render
from tests.conftest import ROOT_PASSWORD, client_env, run, tool
from tests.test_genconfig import free_port, require_nginx, start_nginx, stop_nginx
from tests.test_private_index import make_user

ROUTES = ("/+status", "/+metrics")


def curl(url: str, *args: str) -> tuple[int, str, str]:
    """(status, headers, body) from a real curl."""
    proc = subprocess.run(["curl", "-s", "-D", "-", "--max-time", "10", *args, url],
                          capture_output=True, text=True, timeout=20, check=False)
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), head, body


def check_refusals(base: str, ops: tuple[str, str], other: tuple[str, str]) -> None:
    for route in ROUTES:
        code, head, body = curl(base + route)
        assert code == 401 and "www-authenticate: basic" in head.lower(), (route, head)
        assert '"message"' in body and "serial" not in body, body
        code, _, body = curl(base + route, "-u", f"{other[0]}:{other[1]}")
        assert code == 403 and "may not see the server's status" in body, (route, body)
        code, _, body = curl(base + route, "-u", f"{ops[0]}:{ops[1]}")
        assert code == 200 and ("serial" in body or "devpid_serial" in body), (route, body)
        assert curl(base + route, "-u", f"root:{ROOT_PASSWORD}")[0] == 200
    with requests.Session() as keepalive:  # one connection: the fast front door's path
        for _ in range(3):
            assert keepalive.get(base + "/+status", auth=ops).status_code == 200
            assert keepalive.get(base + "/+status").status_code == 401
            assert keepalive.get(base + "/+metrics", auth=other).status_code == 403
    browser = {"Accept": "text/html", "User-Agent": "Mozilla/5.0"}
    assert "<h2>Status</h2>" not in requests.get(base + "/", headers=browser).text
    assert "<h2>Status</h2>" not in requests.get(base + "/", headers=browser, auth=other).text
    assert "<h2>Status</h2>" in requests.get(base + "/", headers=browser, auth=ops).text
    api = requests.get(base + "/+api")
    assert api.status_code == 200 and api.json()["result"]["login"].endswith("/+login")


def test_status_acl_refuses_others_direct_and_behind_nginx(start_devpid: Any,
                                                           tmp_path: Path) -> None:
    server = start_devpid("--status-acl", "opsbot", name="restricted")
    ops = make_user(server, "opsbot", "ops-pw")
    other = make_user(server)
    check_refusals(server.url, ops, other)

    # devpi-client reads only /+api: it still works against such a server
    env = client_env(tmp_path)
    out = run([tool("devpi"), "use", server.url + "/"], env).stdout
    assert server.url in out
    out = run([tool("devpi"), "login", ops[0], "--password", ops[1]], env).stdout
    assert "logged in" in out

    # `devpid events list` logs in when the status asks for it
    proc = run([tool("devpid"), "events", "list", "--url", server.url, "--user", "root"],
               {**env, "DEVPID_PASSWORD": ROOT_PASSWORD})
    assert proc.returncode == 0

    require_nginx()
    port = free_port()
    files = render(GenConfigOptions(
        serverdir=server.serverdir, port=server.port, nginx_port=port,
        server_name="127.0.0.1", outside_url=f"http://127.0.0.1:{port}",
        nginx_address="127.0.0.1", cache_dir=tmp_path / "cache", page_cache_seconds=30,
    ))
    site = tmp_path / "devpid-nginx.conf"
    site.write_text(files["devpid-nginx.conf"])
    nginx = start_nginx(tmp_path / "nginx", site, port)
    try:
        check_refusals(f"http://127.0.0.1:{port}", ops, other)
    finally:
        stop_nginx(nginx)


def test_status_acl_authenticated_and_the_default(start_devpid: Any) -> None:
    server = start_devpid("--status-acl", ":AUTHENTICATED:", name="authd")
    someone = make_user(server)
    for route in ROUTES:
        assert requests.get(server.url + route).status_code == 401
        assert requests.get(server.url + route, auth=someone).status_code == 200
        assert requests.get(server.url + route, auth=(someone[0], "wrong")).status_code == 401
    server.stop()
    server.args = []  # the default, :ANONYMOUS:: unchanged, open to all
    server.start()
    for route in ROUTES:
        assert requests.get(server.url + route).status_code == 200


def test_status_acl_must_name_someone() -> None:
    proc = subprocess.run([tool("twistd"), "-n", "devpid", "--status-acl", ","],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ))
    assert proc.returncode != 0 and "--status-acl needs at least one user" in (
        proc.stdout + proc.stderr)
