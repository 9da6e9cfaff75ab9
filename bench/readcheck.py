"""What the read check (acl_read, issue #15) costs on a cached simple page.

Starts one devpid (the environment's own, or ``--bin DIR`` of another checkout's venv for an
A/B against a commit from before the read check), creates a public and a private index with
one uploaded package each, warms their simple pages, then loads them with wrk in interleaved
rounds and reports, per case, the median requests/s and the server's CPU microseconds per
request (user + system, from /proc: less disturbed by other load on the machine than
throughput is).

Cases: ``public`` (anonymous, acl_read :ANONYMOUS:), ``private-basic`` (acl_read alice,
Basic auth with the password: a remembered bcrypt check per request), ``private-token``
(the same with a read-only scoped token), ``refused`` (anonymous on the private index: 401).

    python -m bench.readcheck --rounds 5 --duration 5
    python -m bench.readcheck --bin /tmp/old/.venv/bin --only public   # before acl_read
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.loadgen import have_wrk, run_wrk
from bench.servers import Procs, clean_env, free_port, process_cpu_seconds, wait_ok

ROOT_PW = "bench-root-pw"
ALICE_PW = "alice-bench-pw"


def _request(base: str, method: str, path: str, body: Any = None,
             auth: tuple[str, str] | None = None, data: bytes | None = None,
             ctype: str = "application/json") -> tuple[int, bytes]:
    headers = {"Accept": "application/json", "Content-Type": ctype}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()
    payload = data if data is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=payload, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _must(result: tuple[int, bytes], what: str) -> bytes:
    code, body = result
    if code not in (200, 201):
        raise SystemExit(f"{what}: HTTP {code} {body[:300]!r}")
    return body


def _sdist(name: str, version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        pkg = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        info = tarfile.TarInfo(f"{name}-{version}/PKG-INFO")
        info.size = len(pkg)
        tar.addfile(info, io.BytesIO(pkg))
    return buf.getvalue()


def _upload(base: str, stage: str, name: str, auth: tuple[str, str]) -> None:
    boundary = "benchboundary7d9"
    filename = f"{name}-1.0.tar.gz"
    fields = {":action": "file_upload", "name": name, "version": "1.0",
              "metadata_version": "2.1", "filetype": "sdist", "protocol_version": "1"}
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                  f"{v}\r\n".encode())
    out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; "
              f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
              .encode())
    out.write(_sdist(name, "1.0") + b"\r\n" + f"--{boundary}--\r\n".encode())
    _must(_request(base, "POST", f"/{stage}/", auth=auth, data=out.getvalue(),
                   ctype=f"multipart/form-data; boundary={boundary}"), f"upload to {stage}")


def setup(base: str) -> dict[str, dict[str, str]]:
    """Indexes and credentials; returns the headers each case sends."""
    root = ("root", ROOT_PW)
    alice = ("alice", ALICE_PW)
    _must(_request(base, "PUT", "/alice", {"password": ALICE_PW, "email": "a@example.invalid"},
                   auth=root), "create alice")
    _must(_request(base, "PUT", "/alice/pub", {"type": "stage", "bases": []}, auth=alice),
          "create alice/pub")
    private = {"type": "stage", "bases": [], "acl_read": ["alice"]}
    code, body = _request(base, "PUT", "/alice/priv", private, auth=alice)
    if code not in (200, 201):  # a devpid from before acl_read: no private case
        print(f"(no acl_read here: {code} {body[:120]!r}; private cases skipped)",
              file=sys.stderr)
        _must(_request(base, "PUT", "/alice/priv", {"type": "stage", "bases": []},
                       auth=alice), "create alice/priv")
    _upload(base, "alice/pub", "pubpkg", alice)
    _upload(base, "alice/priv", "privpkg", alice)
    basic = "Basic " + base64.b64encode(f"alice:{ALICE_PW}".encode()).decode()
    cases: dict[str, dict[str, str]] = {"public": {}}
    if code in (200, 201):
        cases["private-basic"] = {"Authorization": basic}
        tcode, tbody = _request(base, "POST", "/alice/+tokens",
                                {"indexes": ["alice/priv"], "actions": ["read"],
                                 "expires_in": 3600}, auth=alice)
        if tcode in (200, 201):
            token = json.loads(tbody)["result"]["token"]
            cases["private-token"] = {"Authorization": "Basic " + base64.b64encode(
                f"alice:{token}".encode()).decode()}
        else:
            print(f"(token create: {tcode} {tbody[:200]!r})", file=sys.stderr)
        cases["refused"] = {}
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", type=Path, default=Path(sys.executable).parent,
                   help="bin dir holding twistd and devpid (default: this environment)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk sample")
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--only", action="append", help="run only these cases")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if not have_wrk():
        raise SystemExit("wrk is needed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-readcheck-"))
    procs = Procs(work)
    try:
        serverdir = work / "server"
        import subprocess
        subprocess.run([str(args.bin / "devpid"), "init", "--serverdir", str(serverdir),
                        "--root-password", ROOT_PW, "--no-root-pypi"], check=False,
                       capture_output=True)
        if not (serverdir / "devpid.sqlite").exists():
            subprocess.run([str(args.bin / "devpid"), "init", "--serverdir", str(serverdir),
                            "--root-password", ROOT_PW], check=True, capture_output=True)
        port = free_port()
        proc = procs.spawn("devpid", [str(args.bin / "twistd"), "-n", "--pidfile=", "devpid",
                                      "--serverdir", str(serverdir), "--host", "127.0.0.1",
                                      "--port", str(port)],
                           clean_env(work / "home"))
        base = f"http://127.0.0.1:{port}"
        wait_ok(base + "/+api", proc, 60)
        cases = setup(base)
        urls = {"public": base + "/alice/pub/+simple/pubpkg/"}
        for c in ("private-basic", "private-token", "refused"):
            urls[c] = base + "/alice/priv/+simple/privpkg/"
        chosen = [c for c in cases if not args.only or c in args.only]
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in chosen}
        for c in chosen:  # warm every page once (and check the answer)
            req = urllib.request.Request(urls[c], headers=cases[c])
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as e:
                if c != "refused":
                    raise SystemExit(f"{c}: warm-up got {e.code}") from None
        for r in range(args.rounds):
            for c in (chosen if r % 2 == 0 else list(reversed(chosen))):
                cpu0, _ = process_cpu_seconds([proc.pid])
                res = run_wrk(urls[c], cases[c], conns=args.conns, duration=args.duration)
                cpu1, _ = process_cpu_seconds([proc.pid])
                if res.error or not res.requests:
                    raise SystemExit(f"{c}: wrk failed: {res.error}")
                rps = res.requests / res.seconds
                results[c].append((rps, (cpu1 - cpu0) / res.requests * 1e6))
                print(f"round {r + 1} {c:14s} {rps:9.0f} req/s "
                      f"{results[c][-1][1]:7.1f} CPU us/req", file=sys.stderr)
                time.sleep(0.5)
        summary = {c: {"rps_median": statistics.median(x[0] for x in v),
                       "cpu_us_per_request_median": statistics.median(x[1] for x in v),
                       "samples": v} for c, v in results.items()}
        print("| case | req/s (median) | server CPU µs/request (median) |")
        print("|---|---:|---:|")
        for c, s in summary.items():
            print(f"| {c} | {s['rps_median']:.0f} | {s['cpu_us_per_request_median']:.1f} |")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
