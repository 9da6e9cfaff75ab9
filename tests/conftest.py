"""Shared fixtures: a real devpid daemon on loopback, a real fake "PyPI", real clients.

One daemon and one upstream per test session (tests use unique user/index names so they do
not interfere); tests that need their own daemon (restarts, kill -9, replicas) start one
with ``start_devpid``. Client tools (devpi, twine, pip, uv) come from the test environment
and run as subprocesses with their configuration isolated from this machine's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.fakepypi import FakePyPI

BIN = Path(sys.executable).parent
ROOT_PASSWORD = "root-secret"
_counter = itertools.count()


def tool(name: str) -> str:
    """A command from the test environment (devpi, twine, uv, pip, twistd)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed in the test environment ({BIN})")
    return found


def client_env(tmp: Path) -> dict[str, str]:
    """Environment for client subprocesses: no user/system pip or uv configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "DEVPI"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(tmp / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        DEVPI_CLIENTDIR=str(tmp / "devpi-client"),
        HOME=str(tmp / "home"),
        NO_COLOR="1",
    )
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return env


def run(
    cmd: list[str], env: dict[str, str], *, check: bool = True, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def twine_upload(
    index_url: str, auth: tuple[str, str], env: dict[str, str], *paths: Path
) -> subprocess.CompletedProcess[str]:
    """``twine upload`` of ``paths`` to ``index_url`` (``.../USER/INDEX/``) with a password."""
    return run([tool("twine"), "upload", "--non-interactive", "--disable-progress-bar",
                "--repository-url", index_url, "-u", auth[0], "-p", auth[1],
                *map(str, paths)], env)


@dataclass
class Devpid:
    """A real devpid daemon (``twistd -n devpid``) in a subprocess."""

    serverdir: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    logfile: Path | None = None
    # The fake upstreams and webhook receivers listen on loopback, which devpid refuses to
    # connect to by default; and one daemon serves many tests' wrong passwords.
    allow_private: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 20.0) -> Devpid:
        portfile = self.serverdir.parent / f"{self.serverdir.name}.port"
        portfile.unlink(missing_ok=True)
        self.logfile = self.serverdir.parent / f"{self.serverdir.name}.log"
        port_args = ["--port", str(self.port)] if self.port else ["--port", "0"]
        cmd = [
            tool("twistd"), "-n", "--pidfile=", "devpid",
            "--serverdir", str(self.serverdir), "--host", "127.0.0.1",
            "--portfile", str(portfile), "--bcrypt-rounds", "4",
            *(["--allow-private-addresses", "--max-login-failures", "0"]
              if self.allow_private else []),
            *port_args, *self.args,
        ]
        log = open(self.logfile, "ab")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"devpid exited early:\n{self.log()}")
            if portfile.exists() and portfile.read_text().strip():
                self.port = int(portfile.read_text())
                try:
                    if requests.get(self.url + "/+api", timeout=2).ok:
                        return self
                except (requests.ConnectionError, requests.Timeout):
                    pass  # not listening yet, or busy starting (bounded by ``timeout``)
            time.sleep(0.05)
        raise AssertionError(f"devpid did not start within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile else ""

    # -- convenience for tests ----------------------------------------------------------------
    def login(self, user: str, password: str) -> str:
        r = requests.post(self.url + "/+login", json={"user": user, "password": password})
        r.raise_for_status()
        token: str = r.json()["result"]["password"]
        return token

    def session(self, user: str | None = None, password: str | None = None) -> requests.Session:
        s = requests.Session()
        s.headers["Accept"] = "application/json"
        if user is not None:
            s.auth = (user, password or "")
        return s

    def json(self, method: str, path: str, auth: tuple[str, str] | None = None,
             **kw: Any) -> requests.Response:
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, auth=auth, headers=headers, **kw)


def on_postgres() -> bool:
    """Whether this run puts every test server directory on PostgreSQL (.ci/run's 2nd pass)."""
    return os.environ.get("DEVPID_TEST_STORE") == "postgresql"


def store_for(store: str | None) -> str | None:
    """The ``--store`` a new server directory gets: ``store`` if it is a URL, none for
    ``"sqlite"`` (a test that needs SQLite whatever the run), else the run's default."""
    if store == "sqlite":
        return None
    if store is None and on_postgres():
        from tests.support.pg import fresh_database

        return fresh_database()
    return store


def import_store_args() -> list[str]:
    """``devpid import``'s ``--store`` for the run: a fresh database on PostgreSQL runs."""
    url = store_for(None)
    return [] if url is None else ["--store", url]


def init_serverdir(serverdir: Path, upstream_url: str | None, *, root_pypi: bool = True,
                   store: str | None = None) -> None:
    """``devpid init``; with DEVPID_TEST_STORE=postgresql every server directory gets a
    fresh PostgreSQL database (CI runs the daemon tests that way too, see .ci/run)."""
    cmd = [
        tool("devpid"), "init", "--serverdir", str(serverdir),
        "--root-password", ROOT_PASSWORD, "--bcrypt-rounds", "4",
    ]
    store = store_for(store)
    if store is not None:
        cmd += ["--store", store]
    if upstream_url:
        cmd += ["--mirror-url", upstream_url]
    if not root_pypi:
        cmd.append("--no-root-pypi")
    # The devpid command's own code, run in this process: a subprocess would spend ~2 s of
    # the machine's CPU per test server importing Python (test_cli runs the command itself).
    from devpid.cli import main as devpid_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = devpid_main(cmd[1:])
    if code != 0:
        raise AssertionError(f"command failed ({code}): {' '.join(cmd)}\n"
                             f"--- stdout\n{out.getvalue()}\n--- stderr\n{err.getvalue()}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a PostgreSQL run, ``sqlite_only`` tests are skipped with their stated reason."""
    if not on_postgres():
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    """The session's fake PyPI on loopback (no test needs the internet)."""
    fake = FakePyPI(tmp_path_factory.mktemp("upstream"))
    fake.start()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def devpid_server(tmp_path_factory: pytest.TempPathFactory, upstream: FakePyPI) -> Iterator[Devpid]:
    """The session's devpid daemon; root/pypi mirrors the fake upstream."""
    base = tmp_path_factory.mktemp("devpid")
    serverdir = base / "server"
    init_serverdir(serverdir, upstream.url)
    server = Devpid(serverdir, args=["--request-timeout", "3"]).start()
    yield server
    server.stop()


@pytest.fixture
def start_devpid(tmp_path: Path) -> Iterator[Any]:
    """Factory for extra daemons a test owns (restarts, crashes, replicas)."""
    started: list[Devpid] = []

    def start(
        *args: str, upstream_url: str | None = None, init: bool = True, name: str = "server",
        root_pypi: bool = True, allow_private: bool = True, store: str | None = None,
    ) -> Devpid:
        """``store``: a postgresql:// URL, "sqlite", or None for the run's default; a
        replica's (``--primary-url``, no init) too, on its first start."""
        serverdir = tmp_path / name
        args = tuple(args)
        if init and not serverdir.exists():
            init_serverdir(serverdir, upstream_url, root_pypi=root_pypi, store=store)
        elif ("--primary-url" in args and "--store" not in args
              and not (serverdir / "store.url").exists()):
            url = store_for(store)
            if url is not None:
                args += ("--store", url)
        server = Devpid(serverdir, args=list(args), allow_private=allow_private).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return client_env(tmp_path)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for user and index names within the session daemon."""
    return f"{next(_counter)}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def alice(devpid_server: Devpid, unique: str) -> tuple[str, str]:
    """A fresh user on the session daemon: (name, password)."""
    name, password = f"alice{unique}", "alice-pw"
    r = devpid_server.json("PUT", f"/{name}", json={"password": password})
    assert r.status_code == 201, r.text
    return name, password
