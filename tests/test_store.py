"""The serial-numbered store: one serial per change, a changelog that replays to the same state,
and state that survives restarts and crashes of the daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devpid.store import open_store
from tests.conftest import ROOT_PASSWORD, Devpid


def test_each_commit_is_one_serial_and_noop_writes_none(tmp_path: Path) -> None:
    store, _ = open_store(tmp_path / "s")
    assert store.serial == -1
    with store.transaction() as tx:
        tx.set("user/a", {"x": 1})
        tx.set("user/b", {"x": 2})
    assert tx.serial == 0 and store.serial == 0
    with store.transaction() as tx:
        tx.set("user/a", {"x": 1})  # unchanged
    assert tx.serial is None and store.serial == 0
    with store.transaction() as tx:
        tx.delete("user/b")
        tx.set("index/a/dev", {"type": "stage"})
    assert store.serial == 1
    assert store.changelog(1) == {"user/b": None, "index/a/dev": {"type": "stage"}}
    assert store.items("user/") == [("user/a", {"x": 1})]
    store.close()


def test_changelog_replays_to_the_same_state(tmp_path: Path) -> None:
    src, _ = open_store(tmp_path / "src")
    for i in range(20):
        with src.transaction() as tx:
            tx.set(f"k/{i % 7}", {"i": i})
            if i % 5 == 0:
                tx.delete(f"k/{(i + 3) % 7}")
            tx.set(
                f"file/u/i/p/f{i}.whl",
                {"path": f"u/i/+f/abc/{i}/f{i}.whl", "filename": f"f{i}.whl"},
            )
    dst, _ = open_store(tmp_path / "dst")
    for serial, changes in src.changelog_since(0, 1000):
        dst.apply_serial(serial, changes)
    assert dst.serial == src.serial
    assert list(dst.snapshot()) == list(src.snapshot())
    assert dst.lookup_path("u/i/+f/abc/3/f3.whl") == ("file/u/i/p/f3.whl", "f3.whl")
    # out-of-order replay is refused and changes nothing
    try:
        dst.apply_serial(dst.serial + 2, {"x/y": 1})
    except Exception as e:
        assert "cannot apply serial" in str(e)
    assert dst.get("x/y") is None


def test_writes_advance_serial_by_one_over_http(devpid_server: Devpid, unique: str) -> None:
    name = f"ser{unique}"
    serials = []
    r = devpid_server.json("PUT", f"/{name}", json={"password": "pw"})
    serials.append(int(r.headers["X-Devpi-Serial"]))
    for i in range(3):
        r = devpid_server.json("PUT", f"/{name}/i{i}", auth=(name, "pw"), json={})
        serials.append(int(r.headers["X-Devpi-Serial"]))
    r = devpid_server.json("PATCH", f"/{name}/i0", auth=(name, "pw"), json=["title=x"])
    serials.append(int(r.headers["X-Devpi-Serial"]))
    # other tests may write concurrently only in other processes; this session is serial
    assert serials == list(range(serials[0], serials[0] + 5))
    r = devpid_server.json("GET", "/+status")
    assert r.json()["result"]["serial"] >= serials[-1]


def test_restart_keeps_everything(start_devpid) -> None:  # type: ignore[no-untyped-def]
    server: Devpid = start_devpid()
    assert server.json("PUT", "/carol", json={"password": "carol-pw", "email": "c@x"}).ok
    assert server.json("PUT", "/carol/dev", auth=("carol", "carol-pw"),
                       json={"bases": "root/pypi", "title": "Dev"}).ok
    token = server.login("carol", "carol-pw")
    serial = int(server.json("GET", "/+api").headers["X-Devpi-Serial"])
    server.stop()
    server.start()
    assert int(server.json("GET", "/+api").headers["X-Devpi-Serial"]) == serial
    carol = server.json("GET", "/carol", auth=("carol", "carol-pw")).json()["result"]
    assert carol["email"] == "c@x"
    config = server.json("GET", "/carol/dev").json()["result"]
    assert config["bases"] == ["root/pypi"] and config["title"] == "Dev"
    assert server.login("carol", "carol-pw")
    assert server.login("root", ROOT_PASSWORD)
    # tokens survive restarts (the secret lives in the serverdir)
    import base64

    header = base64.b64encode(f"carol:{token}".encode()).decode()
    assert server.json("PUT", "/carol/x", headers={"X-Devpi-Auth": header}, json={}).ok


def test_kill9_leaves_a_consistent_store(start_devpid) -> None:  # type: ignore[no-untyped-def]
    server: Devpid = start_devpid()
    assert server.json("PUT", "/dave", json={"password": "pw"}).ok
    # hammer writes from a child process, kill -9 the daemon in the middle
    script = (
        "import requests,sys\n"
        "u=sys.argv[1]\n"
        "for i in range(400):\n"
        "    try: requests.put(f'{u}/dave/i{i}', json={}, auth=('dave','pw'),"
        " headers={'Accept':'application/json'}, timeout=5)\n"
        "    except Exception: break\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, server.url])
    import time

    time.sleep(1.0)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    writer.wait(30)
    store, _ = open_store(server.serverdir)
    serial = store.serial
    indexes = store.keys("index/dave/")
    # every committed index is in the changelog and vice versa
    logged = set()
    for _, changes in store.changelog_since(0, 100000):
        logged |= {k for k in changes if k.startswith("index/dave/")}
    assert set(indexes) == logged
    store.close()
    server.start()
    assert int(server.json("GET", "/+api").headers["X-Devpi-Serial"]) == serial
    r = server.json("PUT", "/dave/after", auth=("dave", "pw"), json={})
    assert int(r.headers["X-Devpi-Serial"]) == serial + 1


def test_values_encoded_off_the_reactor_commit_exactly_as_set_values(tmp_path: Path) -> None:
    """set_encoded (a big release record encoded in a worker thread) and set write the same
    text: the changelog entry is composed from each value's encoding, once."""
    import json

    from devpid.store.sqlite import encode_value

    a, _ = open_store(tmp_path / "a")
    b, _ = open_store(tmp_path / "b")
    value = {"z": [1, {"é": "\u2603", "a": None}], "description": "x" * 1000}
    with a.transaction() as tx:
        tx.set("release/u/i/p/1", value)
        tx.set("user/u", {"pwhash": "h"})
    with b.transaction() as tx:
        tx.set_encoded("release/u/i/p/1", value, encode_value(value))
        tx.set("user/u", {"pwhash": "h"})
    raw_a, raw_b = a.changelog_raw(a.serial), b.changelog_raw(b.serial)
    assert raw_a is not None and raw_b is not None and raw_a[1] == raw_b[1]
    assert raw_a[1] == json.dumps({"release/u/i/p/1": value, "user/u": {"pwhash": "h"}},
                                  separators=(",", ":"), sort_keys=True)
    assert b.get("release/u/i/p/1") == value and b.read_apart("release/u/i/p/1") == (value, 0)
    assert b.serial_of("release/u/i/p/1") == 0 and b.serial_of("nothing") == -1
    a.close()
    b.close()
