"""The devpid command and the twistd plugin's start-up behaviour, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid.tap import Options, parse_size
from tests.conftest import Devpid, tool


def devpid_cmd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("devpid"), *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_init_generates_a_password_and_refuses_twice(tmp_path: Path) -> None:
    serverdir = tmp_path / "s"
    proc = devpid_cmd("init", "--serverdir", str(serverdir), "--bcrypt-rounds", "4",
                      "--no-root-pypi")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "root password" in x)
    password = line.rsplit(" ", 1)[1]
    assert len(password) >= 20
    again = devpid_cmd("init", "--serverdir", str(serverdir))
    assert again.returncode == 1 and "already initialised" in again.stderr
    assert (serverdir / ".secret").exists() is False  # created by the server on first start


def test_empty_root_password_only_when_explicit(tmp_path: Path) -> None:
    proc = devpid_cmd("init", "--serverdir", str(tmp_path / "s"), "--root-password", "",
                      "--bcrypt-rounds", "4")
    assert proc.returncode == 0 and "EMPTY password" in proc.stderr


def test_start_on_uninitialised_dir_explains_and_fails(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir", str(tmp_path / "none"),
         "--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "devpid init --serverdir" in proc.stdout + proc.stderr
    assert not (tmp_path / "none").exists()


def test_init_flag_starts_a_fresh_server(start_devpid: Any, tmp_path: Path) -> None:
    server: Devpid = start_devpid("--init", "--root-password", "pw", init=False, name="fresh")
    assert server.login("root", "pw")
    assert server.json("GET", "/root/pypi").json()["result"]["type"] == "mirror"


def test_passwd_changes_a_password_while_the_server_runs(start_devpid: Any) -> None:
    server: Devpid = start_devpid()
    assert server.json("PUT", "/erin", json={"password": "old-pw"}).status_code == 201
    proc = devpid_cmd("passwd", "--serverdir", str(server.serverdir), "erin",
                      "--bcrypt-rounds", "4", stdin="new-pw\n")
    assert proc.returncode == 0, proc.stderr
    r = server.json("POST", "/+login", json={"user": "erin", "password": "old-pw"})
    assert r.status_code == 401
    assert server.login("erin", "new-pw")
    proc = devpid_cmd("passwd", "--serverdir", str(server.serverdir), "nobody", stdin="x\n")
    assert proc.returncode == 1 and "no user" in proc.stderr


def test_json_logs_and_access_lines(start_devpid: Any) -> None:
    server: Devpid = start_devpid("--log-format", "json")
    requests.get(server.url + "/+api?probe=1")
    server.stop()
    records = []
    for line in server.log().splitlines():
        line = line.strip("\x1e").strip()
        if line.startswith("{"):
            records.append(json.loads(line))
    access = [r for r in records if r.get("log_namespace") == "devpid.access"]
    probe = [r for r in access if r.get("uri") == "/+api?probe=1"]
    assert probe and probe[0]["code"] == 200 and probe[0]["size"] > 0
    assert "duration_ms" in probe[0]


def test_options_parse_and_validate() -> None:
    opts = Options()
    opts.parseOptions(["--serverdir", "/tmp/x", "--port", "0", "--max-upload-size", "500M",
                       "--outside-url", "https://pkgs.example.test/devpi"])
    assert opts["port"] == 0 and opts["max-upload-size"] == 500 * 1024**2
    assert opts["serverdir"] == Path("/tmp/x")
    for bad in (["--log-format", "xml"], ["--port", "70000"], ["--outside-url", "ftp://x"],
                ["--request-timeout", "0"], ["--max-upload-size", "lots"],
                ["--primary-url", "http://p", "--init"]):
        with pytest.raises(Exception):  # noqa: B017 (usage.UsageError, raised by twisted)
            Options().parseOptions(bad)
    assert parse_size("1G") == 1024**3 and parse_size("512k") == 512 * 1024


def test_default_serverdir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVPID_SERVERDIR", "/srv/devpid-test")
    opts = Options()
    opts.parseOptions([])
    assert opts["serverdir"] == Path("/srv/devpid-test")
    assert os.environ["DEVPID_SERVERDIR"] == "/srv/devpid-test"


def test_help_texts() -> None:
    proc = devpid_cmd("--help")
    assert proc.returncode == 0
    for command in ("init", "passwd", "export", "import", "gen-config"):
        assert command in proc.stdout
    proc = subprocess.run([tool("twistd"), "devpid", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert "--serverdir" in proc.stdout and "--offline-mode" in proc.stdout
