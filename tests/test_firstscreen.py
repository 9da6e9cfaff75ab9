"""Issue 16: the daemon's first screen, its --version, and short errors for typos."""

from __future__ import annotations

import os
from typing import Any

import requests

import devpid
from tests.conftest import run, tool


def test_versions() -> None:
    for cmd in ([tool("devpid"), "--version"], [tool("twistd"), "devpid", "--version"]):
        proc = run(cmd, dict(os.environ))
        assert proc.stdout.strip() == f"devpid {devpid.__version__}", cmd


def test_mistyped_option_is_short() -> None:
    for cmd, name in (([tool("twistd"), "devpid", "--prot", "3"], "twistd devpid"),
                      ([tool("devpid"), "init", "--serverdri", "x"], "devpid")):
        proc = run(cmd, dict(os.environ), check=False)
        assert proc.returncode == 2, cmd
        out = (proc.stderr + proc.stdout).strip().splitlines()
        assert out[0].startswith(f"{name}: error: "), out
        assert "--prot" in out[0] or "--serverdri" in out[0]
        assert f"'{name} --help'" in out[1]
        assert len(out) == 2, out  # not the whole option table


def test_first_screen(start_devpid: Any) -> None:
    server = start_devpid("--init", "--offline-mode", init=False)
    log = server.log()
    url = server.url
    assert f"serving {url}/" in log
    assert f"installers: pip install --index-url {url}/root/pypi/+simple/ PROJECT" in log
    assert f"serverdir: {server.serverdir}" in log
    assert "offline mode: upstreams are never asked" in log
    assert "generated root password (shown once, keep it): " in log
    assert f"to set a new one: devpid passwd root --serverdir {server.serverdir}" in log
    assert "Starting factory" not in log


def test_first_screen_without_offline_mode(start_devpid: Any, upstream: Any) -> None:
    server = start_devpid(upstream_url=upstream.url)  # given a password: none is printed
    upstream.publish("factory-quiet", "1.0")
    r = requests.get(server.url + "/root/pypi/+simple/factory-quiet/", timeout=30)
    assert r.status_code == 200  # an upstream connection was made (a client factory started)
    server.stop()  # ... and stopped
    log = server.log()
    assert f"serving {server.url}/" in log
    assert "offline mode" not in log and "root password" not in log
    assert "Starting factory" not in log and "Stopping factory" not in log
