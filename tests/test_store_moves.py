"""Moving between the backends: replicas across SQLite and PostgreSQL, and export/import
from one to the other, checked with real daemons and real pip installs.

These run whatever ``DEVPID_TEST_STORE`` says (each test names both ends' backends), and
need ``DEVPID_TEST_PG_URL``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Devpid, run, tool, twine_upload
from tests.support.pg import fresh_database, requires_pg
from tests.support.pkgbuild import make_wheel
from tests.support.polling import serial_of, status, wait_for

pytestmark = requires_pg

CLOSED_UPSTREAM = "http://127.0.0.1:9/simple/"  # nothing listens: no test talks upstream




def upload(server: Devpid, env: dict[str, str], work: Path, user: str, version: str) -> None:
    wheel = make_wheel(work / "dist", "moved-pkg", version)
    twine_upload(f"{server.url}/{user}/dev/", (user, f"{user}-pw"), env, wheel)


def make_user_and_index(server: Devpid, user: str) -> None:
    assert server.json("PUT", f"/{user}", json={"password": f"{user}-pw",
                                                "email": f"{user}@example.org"}).status_code == 201
    r = server.json("PUT", f"/{user}/dev", auth=(user, f"{user}-pw"),
                    json={"bases": ["root/pypi"], "title": "moved"})
    assert r.ok, r.text


def pip_install(server: Devpid, env: dict[str, str], target: Path, user: str,
                version: str) -> None:
    """A real pip install of ``moved-pkg==version`` from ``server``'s ``user/dev``."""
    run([tool("pip"), "install", "--no-deps", "--target", str(target), "--index-url",
         f"{server.url}/{user}/dev/+simple/", f"moved-pkg=={version}"], env)
    assert (target / "moved_pkg" / "__init__.py").is_file()
    assert any(p.name == f"moved_pkg-{version}.dist-info" for p in target.iterdir())


def devpid(*args: str, check: bool = True) -> Any:
    return run([tool("devpid"), *args], dict(os.environ), check=check)


# -- replicas -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("primary_store", "replica_store"),
                         [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_replica_across_backends_serves_uploads_and_resumes_after_restart(
    start_devpid: Any, env: dict[str, str], tmp_path: Path, primary_store: str,
    replica_store: str,
) -> None:
    secret = tmp_path / "replication.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))

    def store(kind: str) -> str:
        return fresh_database() if kind == "postgresql" else "sqlite"

    primary = start_devpid("--secretfile", str(secret), name="primary",
                           upstream_url=CLOSED_UPSTREAM, store=store(primary_store))
    replica = start_devpid("--primary-url", primary.url, "--secretfile", str(secret),
                           init=False, name="replica", store=store(replica_store))
    assert (replica.serverdir / "store.url").exists() == (replica_store == "postgresql")
    make_user_and_index(primary, "rosa")
    upload(primary, env, tmp_path, "rosa", "1.0")
    serial = serial_of(primary)
    wait_for(lambda: serial_of(replica) >= serial, what=f"replica at serial {serial}")
    pip_install(replica, env, tmp_path / "t1", "rosa", "1.0")
    assert replica.login("rosa", "rosa-pw")

    # A restarted replica starts from the serial it has (not from 0) and follows on.
    replica.stop()
    upload(primary, env, tmp_path, "rosa", "2.0")
    later = serial_of(primary)
    replica.start()
    assert serial_of(replica) >= serial  # answered only with its state in place
    wait_for(lambda: serial_of(replica) >= later, what=f"replica at serial {later}")
    pip_install(replica, env, tmp_path / "t2", "rosa", "2.0")
    assert status(replica)["replica"]["refused"] is None


def test_replica_refuses_the_primarys_own_database(
    start_devpid: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "replication.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    database = fresh_database()
    primary = start_devpid("--secretfile", str(secret), name="primary",
                           upstream_url=CLOSED_UPSTREAM, store=database)
    replica = start_devpid("--primary-url", primary.url, "--secretfile", str(secret),
                           init=False, name="replica", store=database)
    refused = wait_for(lambda: status(replica)["replica"]["refused"], what="a refusal")
    assert "database of its own" in refused


def test_primary_url_with_store_is_accepted() -> None:
    from devpid.tap import Options

    options = Options()
    options.parseOptions(["--primary-url", "http://127.0.0.1:1", "--store",
                          "postgresql://devpid@127.0.0.1:1/x"])
    assert options["store"] and options["primary-url"]


# -- export and import across backends ---------------------------------------------------------
def _check_served(server: Devpid, env: dict[str, str], target: Path, before: dict[str, Any]
                  ) -> None:
    """What the source served, the imported server serves: package, user, index, login."""
    pip_install(server, env, target, "nora", "1.0")
    assert server.login("nora", "nora-pw")
    assert requests.post(server.url + "/+login",
                         json={"user": "nora", "password": "wrong"}).status_code == 401
    assert server.login("root", "root-secret")
    index = server.json("GET", "/nora/dev").json()["result"]
    assert index["title"] == "moved" and index["bases"] == ["root/pypi"]
    assert index["projects"] == before["projects"]
    email = server.json("GET", "/nora", auth=("nora", "nora-pw")).json()["result"]["email"]
    assert email == "nora@example.org"


def _source(start_devpid: Any, env: dict[str, str], tmp_path: Path, store: str
            ) -> tuple[Devpid, dict[str, Any]]:
    server = start_devpid(upstream_url=CLOSED_UPSTREAM, name="source", store=store)
    make_user_and_index(server, "nora")
    upload(server, env, tmp_path, "nora", "1.0")
    before = server.json("GET", "/nora/dev").json()["result"]
    return server, before


def test_sqlite_server_exported_and_imported_onto_postgres(
    start_devpid: Any, env: dict[str, str], tmp_path: Path
) -> None:
    server, before = _source(start_devpid, env, tmp_path, "sqlite")
    dump = tmp_path / "dump"
    devpid("export", "--serverdir", str(server.serverdir), str(dump))
    server.stop()
    database = fresh_database()
    target = tmp_path / "imported"
    proc = devpid("import", "--store", database, "--serverdir", str(target), str(dump))
    assert "imported 1/1 projects" in proc.stderr  # progress, as onto SQLite
    assert f"into {target} on postgresql://" in proc.stdout
    assert (target / "store.url").read_text().strip() == database
    imported = start_devpid(init=False, name="imported")
    _check_served(imported, env, tmp_path / "t", before)
    # The data is in the database: a node joining it with --store alone (and the blobs,
    # shared by a link) serves it too.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "+blobs").symlink_to(target / "+blobs")
    other = start_devpid("--store", database, init=False, name="other")
    pip_install(other, env, tmp_path / "t-other", "nora", "1.0")

    # A database that holds a store already is refused, and nothing is written.
    proc = devpid("import", "--store", database, "--serverdir", str(tmp_path / "again"),
                  str(dump), check=False)
    assert proc.returncode == 1
    assert "already holds a devpid store" in proc.stderr
    assert not (tmp_path / "again").exists()


def test_postgres_server_exported_at_one_serial_and_imported_into_sqlite(
    start_devpid: Any, env: dict[str, str], tmp_path: Path
) -> None:
    server, before = _source(start_devpid, env, tmp_path, fresh_database())
    serial = serial_of(server)
    server.stop()
    # Export reads the database, not the node's view: without the view it works the same.
    for suffix in ("", "-wal", "-shm"):
        (server.serverdir / f"devpid.sqlite{suffix}").unlink(missing_ok=True)
    dump = tmp_path / "dump"
    proc = devpid("export", "--serverdir", str(server.serverdir), str(dump))
    assert f"at serial {serial} to {dump}" in proc.stdout
    assert "exported 2/2 files" in proc.stderr  # progress (wheel + metadata), as on SQLite
    target = tmp_path / "imported"
    devpid("import", "--serverdir", str(target), str(dump))
    assert not (target / "store.url").exists()
    assert (target / "devpid.sqlite").is_file()
    imported = start_devpid(init=False, name="imported")
    _check_served(imported, env, tmp_path / "t", before)
