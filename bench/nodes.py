"""Simple-page throughput through the generated nginx site with 1 node vs 2 nodes.

    python -m bench.nodes --store postgresql://USER@127.0.0.1:PORT/postgres [--duration 8]

Both nodes run on one PostgreSQL database (a fresh database is created on that server and
dropped at the end) and one shared ``--blobdir``. nginx's micro-cache is off
(``--page-cache-seconds 0``) and stickiness too (``--sticky none``: one load generator on
127.0.0.1 would otherwise hash to one node), so every request reaches a devpid node and
what is measured is the nodes' own (warm, in-process) page cache behind nginx. Rounds
alternate 1 and 2 nodes so a change in the machine's load hits both; each sample records
the 1-minute load average (``/proc/loadavg``) before it ran. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from bench import loadgen
from bench.servers import Procs, _nginx_main, clean_env, free_port, process_cpu_seconds, wait_ok

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _database(server_url: str) -> tuple[str, str]:
    import psycopg

    name = "devpid_bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def _drop(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _site(work: Path, nodes: list[str], blobdir: Path, port: int) -> str:
    from devpid.genconfig import GenConfigOptions, render

    site = render(GenConfigOptions(
        serverdir=work / "srv", nodes=nodes, blob_dir=blobdir, sticky="none",
        nginx_port=port, nginx_address="127.0.0.1", server_name="127.0.0.1",
        outside_url=f"http://127.0.0.1:{port}", cache_dir=work / "cache",
        page_cache_seconds=0,
    ))["devpid-nginx.conf"]
    ngdir = work / f"nginx-{port}"
    ngdir.mkdir(parents=True, exist_ok=True)
    (ngdir / "site.conf").write_text(site)
    return _nginx_main(ngdir, f"    include {ngdir}/site.conf;")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--store", default=os.environ.get("DEVPID_TEST_PG_URL"),
                   help="a PostgreSQL server URL to create the benchmark database on")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per sample")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--no-wrk", action="store_true", help="use bench/loadgen.py's generator")
    args = p.parse_args(argv)
    if not args.store or urlsplit(args.store).hostname not in ("127.0.0.1", "localhost"):
        p.error("--store must name a PostgreSQL server on 127.0.0.1")
    use_wrk = not args.no_wrk and loadgen.have_wrk()
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="devpid-bench-nodes-"))
    procs = Procs(work / "logs")
    dbname, url = _database(args.store)
    env = clean_env(work / "home")
    results: dict[str, list[dict[str, object]]] = {"1": [], "2": []}
    try:
        blobdir = work / "blobs"
        nodes: list[str] = []
        node_pids: list[int] = []
        nginx_pids: dict[str, int] = {}
        for n in range(2):
            serverdir = work / "srv" / str(n)
            cmd = [str(bindir / "devpid"), "init", "--serverdir", str(serverdir), "--store",
                   url, "--blobdir", str(blobdir), "--root-password", "pw", "--no-root-pypi",
                   "--bcrypt-rounds", "4"]
            procs.spawn(f"init-{n}", cmd, env).wait(60)
            port = free_port()
            proc = procs.spawn(f"node-{n}", [
                str(bindir / "twistd"), "-n", "--pidfile=", "devpid", "--serverdir",
                str(serverdir), "--host", "127.0.0.1", "--port", str(port), "--secretfile",
                str(work / "srv" / ".secret")], env)
            wait_ok(f"http://127.0.0.1:{port}/+api", proc, 30)
            node_pids.append(proc.pid)
            nodes.append(f"http://127.0.0.1:{port}")
        s = requests.Session()
        s.headers["Accept"] = "application/json"
        assert s.put(nodes[0] + "/u", json={"password": "pw"}).status_code == 201
        assert s.put(nodes[0] + "/u/dev", json={"bases": []}, auth=("u", "pw")).ok
        from tests.support import pkgbuild

        for v in range(20):  # a page with some files on it
            wheel = pkgbuild.make_wheel(work / "dist", "bench-pkg", f"1.{v}")
            data = wheel.read_bytes()
            r = s.post(nodes[0] + "/u/dev/", auth=("u", "pw"), data={
                ":action": "file_upload", "name": "bench-pkg", "version": f"1.{v}",
                "sha256_digest": hashlib.sha256(data).hexdigest(), "filetype": "bdist_wheel",
                "pyversion": "py3", "metadata_version": "2.1", "protocol_version": "1"},
                files={"content": (wheel.name, data, "application/octet-stream")})
            assert r.ok, r.text
        time.sleep(1.0)  # node 1 follows
        fronts = {}
        for count in ("1", "2"):
            port = free_port()
            conf = _site(work, nodes[: int(count)], blobdir, port)
            (work / f"nginx-{port}" / "nginx.conf").write_text(conf)
            proc = procs.spawn(f"nginx-{count}", [
                "nginx", "-p", f"{work}/nginx-{port}/", "-c", f"{work}/nginx-{port}/nginx.conf",
                "-e", f"{work}/nginx-{port}/error.log"], env)
            page = f"http://127.0.0.1:{port}/u/dev/+simple/bench-pkg/"
            wait_ok(page, proc, 20)
            fronts[count] = page
            nginx_pids[count] = proc.pid
        for page in fronts.values():  # warm every node's page cache
            loadgen.load(page, JSON, conns=4, duration=2, use_wrk=use_wrk)
        direct = loadgen.load(nodes[0] + "/u/dev/+simple/bench-pkg/", JSON, conns=args.conns,
                              duration=args.duration, use_wrk=use_wrk)
        for _ in range(args.rounds):
            for count, page in fronts.items():
                load = _loadavg()
                watched = {f"node{n}": [pid] for n, pid in enumerate(node_pids)}
                watched["nginx"] = [nginx_pids[count]]
                before = {k: process_cpu_seconds(v)[0] for k, v in watched.items()}
                t0 = time.monotonic()
                lr = loadgen.load(page, JSON, conns=args.conns, duration=args.duration,
                                  use_wrk=use_wrk)
                took = time.monotonic() - t0
                cpu = {k: round(100 * (process_cpu_seconds(v)[0] - before[k]) / took)
                       for k, v in watched.items()}
                results[count].append({"rps": round(lr.rps), "errors": lr.errors,
                                       "cpu_pct_of_one_core": cpu,
                                       "p50_ms": lr.p50_ms, "p99_ms": lr.p99_ms,
                                       "loadavg_before": load, "error": lr.error})
                print(f"{count} node(s): {lr.rps:8.0f} req/s  errors {lr.errors}  "
                      f"p50 {lr.p50_ms} ms  cpu% {cpu}  (load before: {load})", flush=True)
        medians = {c: statistics.median(float(str(r["rps"])) for r in rs)
                   for c, rs in results.items()}
        summary = {
            "tool": "wrk" if use_wrk else "python-asyncio",
            "conns": args.conns, "duration": args.duration, "cpus": os.cpu_count(),
            "direct_node_rps": round(direct.rps), "samples": results,
            "median_rps": medians, "ratio_2_over_1": round(medians["2"] / medians["1"], 2),
            "loadavg_after": _loadavg(),
        }
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        procs.stop_all()
        _drop(args.store, dbname)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
