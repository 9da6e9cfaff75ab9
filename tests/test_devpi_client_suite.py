"""devpi-client's own test suite, from its pinned sdist, passes against a real devpid daemon.

The installed devpi-client (pinned in the ``test`` extra) names the sdist to fetch with pip;
its ``testing/`` directory runs in a subprocess with ``--live-url`` pointing at a fresh daemon
set up as the suite expects of devpi-server (``devpi-init --no-root-pypi``: root with an
empty password, no mirror). The suite also starts a second server itself, through the
``devpi-server``/``devpi-init`` stand-ins of tests/support/devpi_server_shim.py.
Only the tests tests/support/devpi_client_suite_plugin.py names are skipped (each with its
reason), besides the suite's own skips for what this machine lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import BIN, Devpid, client_env, run, tool
from tests.support import devpi_server_shim

ROOT = Path(__file__).resolve().parent.parent
CLIENT_VERSION = version("devpi-client")

#: Skips the suite makes by itself with ``--live-url`` or for tools this machine lacks.
SUITE_OWN_SKIPS = (
    "'hg' command not found",  # Mercurial is not installed (git is)
    "test only works in devpi-server",  # imports devpi_server internals
    "Mapp implementation doesn't have 'get_simple' method.",  # the live-url Mapp has none
)


@dataclass
class SuiteResult:
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"devpi-client {CLIENT_VERSION} suite against devpid: {len(self.passed)} passed,"
                f" {len(self.failed)} failed, {len(self.skipped)} skipped")


def parse_junit(path: Path) -> SuiteResult:
    result = SuiteResult()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skip = case.find("skipped")
        if problem is not None:
            result.failed.append((name, (problem.get("message") or "")[:300]))
        elif skip is not None:
            result.skipped.append((name, skip.get("message") or ""))
        else:
            result.passed.append(name)
    return result


@pytest.fixture(scope="session")
def client_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed devpi-client's sdist tests (``testing/`` and its pytest config).

    pip fetches the sdist of exactly the installed version from the package registry (CI
    reaches it); a copy is kept in the user's cache so later runs need no network.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "devpid-tests"
    sdist = cache / f"devpi_client-{CLIENT_VERSION}.tar.gz"
    if not sdist.exists():
        download = tmp_path_factory.mktemp("sdist")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", str(download), f"devpi-client=={CLIENT_VERSION}"], dict(os.environ),
            timeout=300)
        (found,) = download.glob("devpi_client-*.tar.gz")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = sdist.with_suffix(".part")
        shutil.copyfile(found, tmp)
        tmp.replace(sdist)
    work = tmp_path_factory.mktemp("devpi-client-suite")
    top = f"devpi_client-{CLIENT_VERSION}/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith((top + "testing/", top + "tox.ini"))]
        tar.extractall(work, members=members, filter="data")
    return work / top


@pytest.fixture
def suite_server(tmp_path: Path, start_devpid: Any) -> Iterator[Devpid]:
    """A fresh daemon as ``devpi-init --no-root-pypi`` leaves devpi-server (and with its
    policy: any user may make mirrors, here of the suite's upstream on loopback)."""
    run([tool("devpid"), "init", "--serverdir", str(tmp_path / "server"), "--root-password",
         "", "--no-root-pypi", "--bcrypt-rounds", "4"], dict(os.environ))
    yield start_devpid(*devpi_server_shim.DEVPI_POLICY, init=False)


@pytest.mark.slow
def test_devpi_client_suite_passes(
    client_suite: Path, suite_server: Devpid, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shimbin = tmp_path / "shimbin"
    devpi_server_shim.install(shimbin)
    env = client_env(tmp_path)
    del env["PIP_CONFIG_FILE"]  # devpi use --set-cfg writes the file pip would read
    env.update(
        PATH=os.pathsep.join([str(shimbin), str(BIN), env.get("PATH", "")]),
        VIRTUAL_ENV=sys.prefix,
        PYTHONPATH=str(ROOT),  # for the -p plugin below
    )
    junit = tmp_path / "junit.xml"
    live_url = f"http://localhost:{suite_server.port}"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "testing", "--live-url", live_url,
         "-p", "tests.support.devpi_client_suite_plugin", "-p", "no:cacheprovider",
         "-q", "-rfEs", "--durations=10", "--junitxml", str(junit)],
        cwd=client_suite, env=env, capture_output=True, text=True, timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert junit.exists(), f"the suite did not run:\n{proc.stdout}\n{proc.stderr}"
    result = parse_junit(junit)
    with capsys.disabled():  # the counts show in every run, not only with -s
        print(f"\n{result.summary()}")
    print(proc.stdout[proc.stdout.find("slowest"):].split("\n\n")[0])
    for name, reason in result.skipped:
        print(f"skipped {name}: {reason}")
    failures = "\n".join(f"{name}: {message}" for name, message in result.failed)
    assert not result.failed, f"{result.summary()}\n{failures}\n{proc.stdout[-20000:]}"
    unexpected = [
        (name, reason) for name, reason in result.skipped
        if not reason.startswith("devpid: ") and reason not in SUITE_OWN_SKIPS
    ]
    assert not unexpected, unexpected
    assert len(result.passed) > 300, result.summary()
    # nothing reached the internet: a mirror the suite made of a non-loopback upstream (the
    # default one, in test_upload_to_mirror) was never contacted
    status = requests.get(suite_server.url + "/+status",
                          headers={"Accept": "application/json"}).json()["result"]
    for stage, state in status.get("mirrors", {}).items():
        if urlsplit(state["url"]).hostname not in ("localhost", "127.0.0.1"):
            assert not state["last_success"] and not state["last_failure"], (stage, state)
