"""Issue 15, item 3 (the rest): the audit log travels with export/import and replication,
is written off the reactor in batches (flushed at shutdown), and never holds a secret."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
import requests

from devpid.audit import AuditLog, query
from tests.conftest import Devpid, import_store_args, run, tool
from tests.test_replication import make_users, secretfile, wait_for  # noqa: F401 (fixture)

SECRET = "pw-Zq8vK3-never-logged"


def audit(serverdir: Path, *args: str) -> list[dict[str, Any]]:
    proc = run([tool("devpid"), "audit", "--serverdir", str(serverdir), "--json",
                "--limit", "1000", *args], dict(os.environ))
    return [json.loads(line) for line in proc.stdout.splitlines()]


def secret_writes(server: Devpid, user: str) -> None:
    """Writes whose URL, query string, headers or body carry a password."""
    assert requests.put(f"{server.url}/{user}", json={"password": SECRET}).status_code == 201
    assert requests.post(f"{server.url}/+login?password={SECRET}",
                         json={"user": user, "password": SECRET}).ok
    url = server.url.replace("http://", f"http://{user}:{SECRET}@")
    assert requests.put(f"{url}/{user}/dev", json={"type": "stage"}).status_code == 200
    assert requests.patch(f"{url}/{user}", json={"password": SECRET + "2"}).ok


def test_export_import_keeps_the_audit_log_without_secrets(start_devpid: Any,
                                                            tmp_path: Path) -> None:
    server = start_devpid(name="src")
    secret_writes(server, "carol")
    before = wait_for(lambda: [e for e in audit(server.serverdir) if e["who"] == "carol"])
    assert [(e["method"], e["path"]) for e in before] == [("PUT", "/carol/dev"),
                                                          ("PATCH", "/carol")]
    uuid = requests.get(server.url + "/+api").headers["X-Devpi-Uuid"]
    everything = audit(server.serverdir)
    dump = tmp_path / "dump"
    run([tool("devpid"), "export", "--serverdir", str(server.serverdir), str(dump)],
        dict(os.environ))
    assert "  audit.jsonl\n" in (dump / "MANIFEST.sha256").read_text()
    assert SECRET not in (dump / "audit.jsonl").read_text()
    for leftover in server.serverdir.glob("audit.sqlite*"):
        assert SECRET.encode() not in leftover.read_bytes()

    new = tmp_path / "new"
    run([tool("devpid"), "import", "--serverdir", str(new), str(dump), *import_store_args()],
        dict(os.environ))
    imported = audit(new)
    assert [{k: v for k, v in e.items() if k not in ("origin", "origin_id")}
            for e in imported] == [{k: v for k, v in e.items()
                                    if k not in ("origin", "origin_id")} for e in everything]
    assert {e["origin"] for e in imported} == {uuid}
    assert (new / "audit.sqlite").stat().st_mode & 0o077 == 0

    # A dump without the log (an older devpid's) still imports, with an empty log.
    (dump / "audit.jsonl").unlink()
    manifest = dump / "MANIFEST.sha256"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(True)
                                if "audit.jsonl" not in line))
    run([tool("devpid"), "import", "--serverdir", str(tmp_path / "old"), str(dump)],
        dict(os.environ))
    assert audit(tmp_path / "old") == []

    # A tampered log is refused before anything is written.
    run([tool("devpid"), "export", "--serverdir", str(server.serverdir), str(dump),
         "--force"], dict(os.environ))
    with open(dump / "audit.jsonl", "a") as f:
        f.write('{"id": 99999, "time": 1, "method": "PUT", "path": "/x", "code": 200}\n')
    proc = run([tool("devpid"), "import", "--serverdir", str(tmp_path / "bad"), str(dump)],
               dict(os.environ), check=False)
    assert proc.returncode == 1 and "audit.jsonl: sha256 mismatch" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_a_replica_shows_the_primarys_writes_once_across_restarts(
        start_devpid: Any, secretfile: Path) -> None:  # noqa: F811
    primary = start_devpid("--secretfile", str(secretfile), name="primary")
    replica = start_devpid("--primary-url", primary.url, "--secretfile", str(secretfile),
                           init=False, name="replica")
    uuid = requests.get(primary.url + "/+api").headers["X-Devpi-Uuid"]
    make_users(primary, "aud", 3)

    def carried(n: int) -> list[dict[str, Any]]:
        rows = [e for e in audit(replica.serverdir) if e["origin"] == uuid]
        return rows if len(rows) >= n else []

    wanted = len(wait_for(lambda: audit(primary.serverdir)) or [])
    rows = wait_for(lambda: carried(wanted))
    assert rows, (audit(primary.serverdir), audit(replica.serverdir), replica.log()[-3000:])
    assert [e["path"] for e in rows][-3:] == ["/aud0", "/aud1", "/aud2"]
    text = run([tool("devpid"), "audit", "--serverdir", str(replica.serverdir)],
               dict(os.environ)).stdout
    assert "PUT /aud2 201 serial=" in text and f"origin={uuid}" in text

    replica.kill9()
    make_users(primary, "bud", 2)
    replica.start()
    total = len(audit(primary.serverdir))
    rows = wait_for(lambda: carried(total))
    assert rows and len(rows) == total, rows
    assert len({e["origin_id"] for e in rows}) == len(rows)
    restart = [e["path"] for e in rows]
    replica.stop()
    replica.start()
    make_users(primary, "cud", 1)
    rows = wait_for(lambda: carried(total + 1))
    assert [e["path"] for e in rows] == [*restart, "/cud0"]
    status = requests.get(replica.url + "/+status").json()["result"]["replica"]
    assert status["audit-rows-pulled"] >= 1 and status["audit-last-error"] is None


def test_shutdown_writes_the_queued_rows(start_devpid: Any) -> None:
    server = start_devpid(name="flush")
    for i in range(20):
        assert requests.put(f"{server.url}/flush{i}", json={"password": "x"}).ok
    server.stop(signal.SIGTERM)
    assert [e["path"] for e in audit(server.serverdir)][-20:] == [
        f"/flush{i}" for i in range(20)]
    server.start()
    metrics = requests.get(server.url + "/+metrics").text
    assert "devpid_audit_dropped_total 0" in metrics


class _Request:
    method = b"PUT"
    uri = b"/x/y?password=secret"
    code = 201
    devpid_identity = "x"

    def __init__(self) -> None:
        from twisted.web.http_headers import Headers

        self.responseHeaders = Headers({b"X-Devpi-Serial": [b"7"]})
        self.requestHeaders = Headers()

    def getClientAddress(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 1)


@pytest_twisted.ensureDeferred
async def test_rows_are_queued_written_by_a_thread_and_bounded(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    """record() only queues (no INSERT on the reactor thread); the writer thread commits
    in batches; beyond the bound rows are dropped and counted; close() writes the rest."""
    import threading

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from devpid import audit as auditmod
    from devpid.proxies import TrustedProxies

    log = AuditLog(tmp_path, TrustedProxies([]), reactor)
    threads: list[int] = []
    real_append = auditmod.append

    def spy(conn: sqlite3.Connection, rows: list[Any]) -> None:
        threads.append(threading.get_ident())
        real_append(conn, rows)

    monkeypatch.setattr(auditmod, "append", spy)
    monkeypatch.setattr(auditmod, "MAX_QUEUE", 5)
    for _ in range(7):
        log.record(_Request())
    assert query(tmp_path) == [] and log.dropped == 2 and len(log.queue) == 5
    for _ in range(50):
        if len(query(tmp_path)) == 5:
            break
        await deferLater(reactor, 0.05)
    rows = query(tmp_path)
    assert len(rows) == 5 and rows[0]["path"] == "/x/y" and rows[0]["serial"] == 7
    assert threads and threading.get_ident() not in threads
    log.record(_Request())
    await log.close()  # shutdown: what is still queued is written
    assert len(query(tmp_path)) == 6 and log.status() == {"audit-queued": 0,
                                                          "audit-dropped": 2}
