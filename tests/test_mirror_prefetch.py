"""``devpid mirror prefetch`` (issue 18 item 3): warm the cache through a running server, then
install the same requirements from a server in --offline-mode with the upstream gone."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.conftest import Devpid, run, tool
from tests.support.fakepypi import FakePyPI

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def test_prefetch_then_offline_install_with_pip_and_uv(
    start_devpid, tmp_path: Path, env: dict[str, str]  # type: ignore[no-untyped-def]
) -> None:
    fake = FakePyPI(tmp_path / "up")
    fake.start()
    try:
        fake.publish("warm-app", "1.0", requires_dist=["warm-lib>=2"])
        fake.publish("warm-lib", "1.0")
        fake.publish("warm-lib", "2.0")
        fake.publish("warm-other", "1.0")
        server: Devpid = start_devpid(upstream_url=fake.url)
        index = server.url + "/root/pypi/+simple/"
        req = tmp_path / "requirements.txt"
        req.write_text("warm-app\n")
        proc = run([tool("devpid"), "mirror", "prefetch", "-r", str(req), "--index-url", index],
                   env)
        out = proc.stdout + proc.stderr
        assert "[1] Collecting warm-app" in out and "[2] Collecting warm-lib" in out, out
        assert "prefetched 2 files" in out and "for 2 projects" in out, out
        deadline = time.monotonic() + 15  # the last record commits just after its last byte
        while server.json("GET", "/+status").json()["result"]["mirror-cache"].get(
                "root/pypi", {}).get("files") != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop()
        fake.stop()
        server.args = ["--offline-mode"]
        server.start()
        proc = run([tool("pip"), "install", "--target", str(tmp_path / "pip"), "-i", index,
                    "-r", str(req), "--timeout", "10", "--retries", "0"], env)
        assert (tmp_path / "pip" / "warm_lib-2.0.dist-info").is_dir(), proc.stdout
        proc = run([tool("uv"), "pip", "install", "--target", str(tmp_path / "uv"),
                    "--index-url", index, "-r", str(req)], env)
        assert "warm-lib==2.0" in proc.stdout + proc.stderr
        r = requests.get(f"{server.url}/root/pypi/+simple/warm-other/",
                         headers={"Accept": JSON_ACCEPT}, timeout=5)
        assert r.status_code == 503  # not prefetched: not there offline
    finally:
        fake.close()


def test_prefetch_refuses_a_missing_file_and_reports_pip_failures(
    start_devpid, tmp_path: Path, env: dict[str, str]  # type: ignore[no-untyped-def]
) -> None:
    proc = run([tool("devpid"), "mirror", "prefetch", "-r", str(tmp_path / "nope.txt")], env,
               check=False)
    assert proc.returncode == 2 and "no such requirements file" in proc.stderr
    server: Devpid = start_devpid(upstream_url="http://127.0.0.1:9/simple/")
    req = tmp_path / "r.txt"
    req.write_text("unreachable-thing\n")
    proc = run([tool("devpid"), "mirror", "prefetch", "-r", str(req), "--index-url",
                server.url + "/root/pypi/+simple/", "--retries", "0"], env, check=False)
    assert proc.returncode == 1 and "prefetch failed" in proc.stderr
