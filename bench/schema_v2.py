"""What schema version 2 (the covering ``kv (key, serial)`` index) buys: the per-prefix reads
before and after the upgrade, on a store of many cached mirror pages.

    python -m bench.schema_v2 [--pages 50000] [--files 8] [--dir /tmp/schema-bench]

Builds a version-1 store (the frozen DDL of tests/test_store_schema.py) holding ``--pages``
mirror pages of ``--files`` files each, times ``max_serial`` and ``keys`` over the mirror's
prefix (a mirror's project-list request runs the first, its name list the second), opens it
with the current code (the upgrade, timed) and times them again. Warm page cache both times.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devpid.store.schema import SQLITE_V1
from devpid.store.sqlite import SQLiteStore


def _page(n: int, files: int) -> dict[str, Any]:
    name = f"proj{n:06d}"
    return {"serial": n, "files": [
        {"path": f"root/pypi/+f/{n:06d}{j:03d}/{name}-{j}.0.tar.gz",
         "filename": f"{name}-{j}.0.tar.gz", "requires_python": ">=3.8",
         "hashes": {"sha256": f"{n:032x}{j:032x}"}} for j in range(files)]}


def build_v1(path: Path, pages: int, files: int) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in SQLITE_V1:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO meta VALUES ('uuid', 'bench')")
    conn.execute("BEGIN")
    for n in range(pages):  # one serial per page, as a mirror caching them one by one
        key = f"mirror/root/pypi/proj{n:06d}"
        text = json.dumps(_page(n, files), separators=(",", ":"), sort_keys=True)
        conn.execute("INSERT INTO changelog VALUES (?, ?, ?)", (n, time.time(), "{}"))
        conn.execute("INSERT INTO kv VALUES (?, ?, ?)", (key, n, text))
        if n % 10 == 0:
            conn.execute("INSERT INTO kv VALUES (?, ?, '{}')", (f"project/alice/dev/p{n}", n))
    conn.execute("COMMIT")
    conn.close()


def timed(f: Callable[[], object], repeat: int = 7) -> float:
    f()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def measure(store: SQLiteStore) -> dict[str, float]:
    return {
        "max_serial('mirror/root/pypi/')": timed(lambda: store.max_serial("mirror/root/pypi/")),
        "keys('mirror/root/pypi/')": timed(lambda: store.keys("mirror/root/pypi/")),
        "max_serial('project/alice/dev/')": timed(lambda: store.max_serial("project/alice/dev/")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=50000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/schema-bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "devpid.sqlite"
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    build_v1(path, args.pages, args.files)
    size = path.stat().st_size
    old = SQLiteStore(path, readonly=True)
    before = measure(old)
    old.close()
    start = time.perf_counter()
    SQLiteStore(path).close()  # the upgrade to version 2
    upgrade = time.perf_counter() - start
    new = SQLiteStore(path, readonly=True)
    after = measure(new)
    new.close()
    print(f"{args.pages} mirror pages x {args.files} files, database {size / 2**20:.0f} MiB "
          f"-> {path.stat().st_size / 2**20:.0f} MiB; upgrade 1 -> 2 took {upgrade:.2f} s")
    for name in before:
        print(f"  {name:36} v1 {before[name]:8.2f} ms   v2 {after[name]:8.2f} ms"
              f"   ({before[name] / max(after[name], 1e-6):.0f}x)")


if __name__ == "__main__":
    main()
