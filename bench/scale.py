"""bench/scale.py: how devpid's costs grow with the amount of data, per store.

For each size (N projects, F files in all) it generates a dump in devpid's export format
(tiny but real, hashed files), imports it onto SQLite and onto PostgreSQL, and measures:
import time, start-up (process start to the first 200 on /+api), RSS after the start and
after a page sweep, uncached and cached simple-page latency over a sample of projects,
upload latency, export time, ``devpid gc`` time and replica catch-up. devpi-server gets the
same data through ``devpi-import`` of a generated devpi export, for the sizes it can take in
bounded time. Results: ``bench/scale.json``, ``bench/SCALE.md`` (tables) and
``bench/scale.svg`` (start-up, page latency and RSS against the number of projects).

    python bench/scale.py                    # 1k and 10k projects (about 20 minutes, 2 cores)
    python bench/scale.py --sizes 1k:3k,10k:30k,100k:100k   # + 100k projects (~+25 min)
    python bench/scale.py --sizes 100k:1m --stores sqlite --no-replica   # 1M files (hours)
    python bench/scale.py --plot-only        # redraw SCALE.md and scale.svg from scale.json

Everything listens on 127.0.0.1; every command and wait is bounded; every server started is
stopped by its process group in ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import percentile
from bench.servers import (
    BENCH,
    ROOT,
    TOOLS,
    DevpiServer,
    Procs,
    clean_env,
    ensure_devpi_venv,
    free_port,
    memory_mb,
    wait_ok,
)

ROOT_PW = "scale-root-pw"
USER, USER_PW = "bench", "bench-pw"
STAGE = f"{USER}/dev"
PIP_UA = "pip/24.0 {}"
CACHE = BENCH / ".cache" / "scale"
DEFAULT_SIZES = "1k:3k,10k:30k"  # ~20 min here; 100k:100k and 100k:1m as options


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def load_avg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Size:
    projects: int
    files: int

    @property
    def label(self) -> str:
        return f"{_short(self.projects)} projects / {_short(self.files)} files"

    @property
    def slug(self) -> str:
        return f"{self.projects}x{self.files}"

    def files_of(self, i: int) -> int:
        """Files (= versions) of project ``i``: F spread evenly, the first ones get the rest."""
        base, extra = divmod(self.files, self.projects)
        return base + (1 if i < extra else 0)


def _short(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if n >= div and n % (div // 10) == 0:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


def _count(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * mult)


def parse_sizes(spec: str) -> list[Size]:
    """``1k:3k,10k:30k``: projects:files pairs (files >= projects)."""
    out = []
    for part in spec.split(","):
        p, _, f = part.partition(":")
        size = Size(_count(p), _count(f or p))
        if size.projects < 1 or size.files < size.projects:
            raise argparse.ArgumentTypeError(f"bad size {part!r}: need 1 <= projects <= files")
        out.append(size)
    return out


def project_name(i: int) -> str:
    return f"scale-p{i:07d}"


def version_of(j: int) -> str:
    return f"1.{j}"


def filename_of(i: int, j: int) -> str:
    return f"scale_p{i:07d}-{version_of(j)}.tar.gz"


def blob_of(i: int, j: int) -> bytes:
    """A tiny file, different for every (project, version): real bytes with a real hash."""
    return f"scale bench file {project_name(i)} {version_of(j)}\n".encode()


# --------------------------------------------------------------------------- dump generation
def _write_blob(root: Path, data: bytes) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    rel = f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha, rel


def generate_devpid_dump(dumpdir: Path, size: Size) -> Path:
    """A devpid dump (format ``devpid-dump`` 1, see devpid/dump.py) of ``size``; cached."""
    done = dumpdir / ".complete"
    if done.exists():
        return dumpdir
    from devpid import auth
    from devpid.model.indexes import new_config
    from devpid.model.names import normalize_name

    shutil.rmtree(dumpdir, ignore_errors=True)
    dumpdir.mkdir(parents=True)
    t0 = time.perf_counter()
    when = [2026, 12, 1, 12, 0, 0]
    stamp = "2026-12-01T12:00:00.000000Z"
    manifest: list[tuple[str, str]] = []
    entries: list[tuple[str, Any]] = [
        (f"user/{USER}", {"pwhash": auth.hash_password(USER_PW, 4), "created": stamp,
                          "email": "bench@example.invalid"}),
        ("user/root", {"pwhash": auth.hash_password(ROOT_PW, 4), "created": stamp}),
        (f"index/{STAGE}", new_config(USER, {"type": "stage", "bases": []},
                                      default_cache_expiry=1800, normalize=normalize_name)),
    ]
    body = dumpdir / "devpid-dump.json"
    with open(body, "w", encoding="utf-8") as f:
        head = {"format": "devpid-dump", "version": 1, "exported_at": stamp,
                "source_uuid": "5ca1ebe4c400000000000000000000", "serial": 0}
        f.write(json.dumps(head, sort_keys=True)[:-1] + ', "entries": [\n')
        first = True

        def put(key: str, value: Any) -> None:
            nonlocal first
            f.write(("" if first else ",\n")
                    + json.dumps([key, value], sort_keys=True, separators=(",", ":")))
            first = False

        for key, value in entries:
            put(key, value)
        for i in range(size.projects):
            name = project_name(i)
            put(f"project/{STAGE}/{name}", {"name": name, "created": stamp})
            for j in range(size.files_of(i)):
                version = version_of(j)
                data = blob_of(i, j)
                sha, rel = _write_blob(dumpdir, data)
                manifest.append((sha, rel))
                fn = filename_of(i, j)
                put(f"release/{STAGE}/{name}/{version}",
                    {"name": name, "version": version, "summary": "scale bench"})
                put(f"file/{STAGE}/{name}/{fn}", {
                    "filename": fn, "path": f"{STAGE}/+f/{sha[:3]}/{sha[3:16]}/{fn}",
                    "sha256": sha, "md5": hashlib.md5(data).hexdigest(), "size": len(data),
                    "version": version, "upload_time": stamp, "requires_python": None,
                    "yanked": False,
                    "log": [{"what": "upload", "who": USER, "when": when, "dst": STAGE}],
                })
        f.write("\n]}\n")
    (dumpdir / "audit.jsonl").write_text("")
    for name in ("devpid-dump.json", "audit.jsonl"):
        manifest.append((_sha_file(dumpdir / name), name))
    with open(dumpdir / "MANIFEST.sha256", "w") as f:
        f.writelines(f"{d}  {rel}\n" for d, rel in sorted(manifest, key=lambda m: m[1]))
    done.write_text(f"{time.perf_counter() - t0:.1f}\n")
    log(f"generated {dumpdir} in {time.perf_counter() - t0:.1f}s")
    return dumpdir


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def generate_devpi_dump(dumpdir: Path, size: Size, version: str) -> Path:
    """The same data as a devpi-server export (``dataindex.json`` dumpversion 2 + files)."""
    done = dumpdir / ".complete"
    if done.exists():
        return dumpdir
    shutil.rmtree(dumpdir, ignore_errors=True)
    dumpdir.mkdir(parents=True)
    t0 = time.perf_counter()
    when = [2026, 12, 1, 12, 0, 0]
    projects: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    for i in range(size.projects):
        name = project_name(i)
        versions: dict[str, Any] = {}
        for j in range(size.files_of(i)):
            v = version_of(j)
            data = blob_of(i, j)
            sha = hashlib.sha256(data).hexdigest()
            fn = filename_of(i, j)
            rel = f"{STAGE}/{name}/{v}/{fn}"
            path = dumpdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            versions[v] = {"name": name, "version": v, "summary": "scale bench"}
            files.append({
                "entrymapping": {"hash_spec": f"sha256={sha}", "hashes": {"sha256": sha},
                                 "last_modified": "Tue, 01 Dec 2026 12:00:00 GMT",
                                 "project": name, "version": v},
                "log": [{"what": "upload", "who": USER, "when": when, "dst": STAGE}],
                "projectname": name, "relpath": rel, "type": "releasefile", "version": v,
            })
        projects[name] = versions
    index: dict[str, Any] = {
        "dumpversion": "2",
        "pythonversion": list(sys.version_info[:3]),
        "devpi_server": version,
        "secret": base64.b64encode(os.urandom(32)).decode(),
        "uuid": "5ca1ebe4c400000000000000000000ff",
        # No hashes: devpi-import creates both users with an empty password.
        "users": {"root": {}, USER: {"email": "bench@example.invalid"}},
        "indexes": {STAGE: {
            "indexconfig": {"type": "stage", "bases": [], "volatile": True,
                            "acl_upload": [USER], "acl_toxresult_upload": [":ANONYMOUS:"],
                            "mirror_whitelist": [], "mirror_whitelist_inheritance": "intersection"},
            "projects": projects,
            "files": files,
        }},
    }
    with open(dumpdir / "dataindex.json", "w") as f:
        json.dump(index, f)
    done.write_text(f"{time.perf_counter() - t0:.1f}\n")
    log(f"generated devpi export {dumpdir} in {time.perf_counter() - t0:.1f}s")
    return dumpdir


# --------------------------------------------------------------------------- processes
def run_measured(argv: list[str], env: dict[str, str], timeout: float,
                 cwd: Path | None = None) -> dict[str, Any]:
    """Run a command; its wall time, peak RSS (its own, via wait4) and exit status."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + timeout
        status: int | str = "timeout"
        rusage = None
        while time.perf_counter() < deadline:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = os.waitstatus_to_exitcode(st), ru
                proc.returncode = status
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        secs = time.perf_counter() - t0
        out.seek(0)
        tail = out.read()[-1500:].decode(errors="replace")
    result = {"seconds": round(secs, 3), "rc": status,
              "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1) if rusage else None,
              "load": load_avg()}
    if status != 0:
        result["output"] = tail
    return result


class Conn:
    """One keep-alive HTTP connection to 127.0.0.1 (latency without connect costs)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes, float]:
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                return (r.status, {k.lower(): v for k, v in r.getheaders()}, data,
                        time.perf_counter() - t0)
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port,
                                                    timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.c.close()


def stats_ms(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "median_ms": _r(percentile(ms, 50)), "p95_ms": _r(percentile(ms, 95)),
            "max_ms": _r(max(ms) if ms else None)}


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def page_path(name: str) -> str:
    return f"/{STAGE}/+simple/{name}/"


def page_latencies(port: int, names: list[str], passes: int) -> dict[str, Any]:
    """First GET of each sampled page (uncached), then ``passes`` more rounds (cached)."""
    conn = Conn(port)
    headers = {"User-Agent": PIP_UA, "Accept": "text/html"}
    first: list[float] = []
    again: list[float] = []
    bad = 0
    try:
        for name in names:
            status, _, body, secs = conn.request("GET", page_path(name), headers)
            bad += status != 200 or name.encode() not in body
            first.append(secs)
        for _ in range(passes):
            for name in names:
                status, _, _, secs = conn.request("GET", page_path(name), headers)
                bad += status != 200
                again.append(secs)
    finally:
        conn.close()
    return {"uncached": stats_ms(first), "cached": stats_ms(again), "bad_answers": bad}


def sweep_pages(port: int, names: list[str], max_seconds: float) -> dict[str, Any]:
    """GET many project pages (the sweep that fills per-page caches), bounded in time."""
    conn = Conn(port)
    headers = {"User-Agent": PIP_UA, "Accept": "text/html"}
    t0 = time.perf_counter()
    n = bad = 0
    try:
        for name in names:
            if time.perf_counter() - t0 > max_seconds:
                break
            status, _, _, _ = conn.request("GET", page_path(name), headers)
            bad += status != 200
            n += 1
    finally:
        conn.close()
    secs = time.perf_counter() - t0
    return {"pages": n, "seconds": round(secs, 2), "per_s": round(n / secs, 1) if secs else None,
            "bad_answers": bad}


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "scalebench" + hashlib.sha1(content).hexdigest()[:16]
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                     f"{v}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload_latencies(port: int, count: int, tag: str, password: str = USER_PW
                     ) -> dict[str, Any]:
    """``count`` multipart POSTs of a tiny sdist (as twine sends them), basic auth."""
    conn = Conn(port, timeout=60)
    auth = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
    times: list[float] = []
    bad: list[str] = []
    try:
        for k in range(count):
            name = f"scale-up-{tag}-{k:03d}"
            fn = f"{name.replace('-', '_')}-1.0.tar.gz"
            content = f"uploaded {name}\n".encode()
            body, ctype = multipart({":action": "file_upload", "protocol_version": "1",
                                     "name": name, "version": "1.0", "filetype": "sdist",
                                     "pyversion": "source",
                                     "sha256_digest": hashlib.sha256(content).hexdigest()},
                                    fn, content)
            status, _, data, secs = conn.request(
                "POST", f"/{STAGE}/", {"Authorization": auth, "Content-Type": ctype}, body)
            if status != 200:
                bad.append(f"{status} {data[:200]!r}")
            times.append(secs)
    finally:
        conn.close()
    out = stats_ms(times)
    out["errors"] = bad[:3]
    out["failed"] = len(bad)
    return out


def serial_of(port: int, timeout: float = 5.0) -> int | None:
    """The serial a devpid node reports (``X-Devpi-Serial`` of /+api)."""
    try:
        conn = Conn(port, timeout)
        try:
            status, headers, _, _ = conn.request("GET", "/+api", {"Accept": "application/json"})
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None
    value = headers.get("x-devpi-serial")
    return int(value) if status == 200 and value and value.lstrip("-").isdigit() else None


def status_json(port: int) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        conn = Conn(port, 10)
        try:
            status, _, body, _ = conn.request("GET", "/+status", {"Accept": "application/json"})
        finally:
            conn.close()
        if status == 200:
            result: dict[str, Any] = json.loads(body).get("result", {})
            return result
    return {}


# --------------------------------------------------------------------------- PostgreSQL
class PgCluster:
    """The throw-away cluster of .ci/pg-cluster (loopback only), a database per run."""

    def __init__(self) -> None:
        # Its own directory the server's user can enter (the cluster does not run as root).
        self.dir = Path(tempfile.mkdtemp(prefix="pg-scale-"))
        self.dir.chmod(0o755)
        self.url: str | None = None

    def start(self) -> str:
        cp = subprocess.run([str(ROOT / ".ci" / "pg-cluster"), "start", str(self.dir)],
                            capture_output=True, text=True, timeout=120, check=False)
        if cp.returncode != 0:
            raise RuntimeError(f"pg-cluster start failed: {cp.stderr.strip()[-300:]}")
        self.url = cp.stdout.strip().splitlines()[-1]
        if "@127.0.0.1:" not in self.url:
            raise RuntimeError(f"pg-cluster gave a non-loopback URL: {self.url}")
        return self.url

    def database(self, name: str) -> str:
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.url is not None:
            subprocess.run([str(ROOT / ".ci" / "pg-cluster"), "stop", str(self.dir)],
                           capture_output=True, timeout=120, check=False)
            self.url = None
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- one devpid run
class Budget:
    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + minutes * 60

    def left(self) -> float:
        return self.end - time.monotonic()


def devpid_argv(serverdir: Path, port: int, *extra: str) -> list[str]:
    return [str(TOOLS / "twistd"), "-n", "--pidfile=", "devpid", "--serverdir", str(serverdir),
            "--host", "127.0.0.1", "--port", str(port), "--gc-interval", "0", *extra]


def start_devpid(procs: Procs, name: str, argv: list[str], env: dict[str, str],
                 port: int, timeout: float) -> tuple[subprocess.Popen[bytes], float]:
    t0 = time.perf_counter()
    proc = procs.spawn(name, argv, env)
    wait_ok(f"http://127.0.0.1:{port}/+api", proc, timeout)
    return proc, time.perf_counter() - t0


def wait_index_loaded(port: int, timeout: float) -> tuple[float | None, float]:
    """Seconds until /+status says the start-up index (mirror cache) is built (None: no
    such key), and the slowest /+api answer meanwhile (ms): how long the reactor stalled."""
    t0 = time.perf_counter()
    worst = 0.0
    conn = Conn(port, timeout)
    try:
        while time.perf_counter() - t0 < timeout:
            _, _, _, secs = conn.request("GET", "/+api", {"Accept": "application/json"})
            worst = max(worst, secs)
            st = status_json(port)
            if "mirror-cache-loaded" not in st:
                return None, worst * 1000
            if st["mirror-cache-loaded"]:
                return time.perf_counter() - t0, worst * 1000
            time.sleep(0.005)
    finally:
        conn.close()
    return None, worst * 1000


def measure_devpid(args: argparse.Namespace, procs: Procs, work: Path, size: Size,
                   store: str, dump: Path, pg: PgCluster | None) -> dict[str, Any]:
    res: dict[str, Any] = {"server": "devpid", "store": store, "projects": size.projects,
                           "files": size.files, "load_before": load_avg()}
    env = clean_env(work / "home")
    serverdir = work / f"{store}-{size.slug}"
    shutil.rmtree(serverdir, ignore_errors=True)
    url = None
    timeout = args.step_timeout
    onto: list[str] = []
    if store != "sqlite":  # devpid import --store: the same import, into an empty database
        assert pg is not None
        url = pg.database(f"scale_{size.slug}")
        onto = ["--store", url]
    imp = run_measured([str(TOOLS / "devpid"), "import", "--serverdir", str(serverdir),
                        str(dump), "--root-password", ROOT_PW, "--bcrypt-rounds", "4", *onto],
                       env, timeout)
    res["import"] = imp
    log(f"  import ({store}): {imp['seconds']}s rc={imp['rc']} peak {imp['peak_rss_mb']} MB")
    if imp["rc"] != 0:
        res["error"] = f"import failed: {imp.get('output', '')[-400:]}"
        return res
    names = [project_name(i) for i in range(size.projects)]
    rng = random.Random(size.projects)
    sample = rng.sample(names, min(args.sample, len(names)))
    port = free_port()
    proc = None
    replica = None
    try:
        starts = []
        for attempt in range(args.starts):
            port = free_port()
            proc, secs = start_devpid(procs, f"devpid-{store}-{size.slug}-{attempt}",
                                      devpid_argv(serverdir, port), env, port, timeout)
            starts.append(round(secs, 3))
            if attempt < args.starts - 1:
                procs.stop(proc)
        assert proc is not None
        res["startup_s"] = starts
        res["startup_median_s"] = sorted(starts)[len(starts) // 2]
        res["rss_at_first_200_mb"] = round(memory_mb(proc.pid)["rss"], 1)
        ready, stall = wait_index_loaded(port, timeout)
        res["index_ready_s"] = _r(ready, 3)
        res["api_max_ms_while_indexing"] = _r(stall, 1)
        time.sleep(0.5)
        res["rss_after_start_mb"] = round(memory_mb(proc.pid)["rss"], 1)
        res["serial"] = serial_of(port)
        log(f"  start-up {starts} s, index ready +{ready} s (slowest /+api {stall:.0f} ms), RSS "
            f"{res['rss_after_start_mb']} MB, serial {res['serial']}")
        res["pages"] = page_latencies(port, sample, args.passes)
        log(f"  pages: uncached {res['pages']['uncached']['median_ms']} ms, "
            f"cached {res['pages']['cached']['median_ms']} ms (median)")
        sweep_names = names if len(names) <= args.sweep else rng.sample(names, args.sweep)
        res["sweep"] = sweep_pages(port, sweep_names, args.sweep_seconds)
        mem = memory_mb(proc.pid)
        res["rss_after_sweep_mb"] = round(mem["rss"], 1)
        res["hwm_after_sweep_mb"] = round(mem["hwm"], 1)
        log(f"  sweep {res['sweep']['pages']} pages: RSS {res['rss_after_sweep_mb']} MB")
        res["upload"] = upload_latencies(port, args.uploads, f"{store}{size.projects}")
        log(f"  uploads: {res['upload']['median_ms']} ms median, failed "
            f"{res['upload']['failed']}")
        if args.core_only:
            return res
        export = work / f"export-{store}-{size.slug}"
        shutil.rmtree(export, ignore_errors=True)
        res["export"] = run_measured([str(TOOLS / "devpid"), "export", "--serverdir",
                                      str(serverdir), str(export)], env, timeout)
        shutil.rmtree(export, ignore_errors=True)
        log(f"  export: {res['export']['seconds']} s, peak {res['export']['peak_rss_mb']} MB")
        res["gc"] = run_measured([str(TOOLS / "devpid"), "gc", "--serverdir", str(serverdir)],
                                 env, timeout)
        log(f"  gc: {res['gc']['seconds']} s, peak {res['gc']['peak_rss_mb']} MB")
        res["serial"] = serial_of(port)
        if args.no_replica:
            res["replica"] = {"skipped": "--no-replica"}
        else:
            res["replica"], replica = catch_up(args, procs, work, env, size, store,
                                               serverdir, port, url, res["serial"])
            log(f"  replica: {res['replica']}")
        mem = memory_mb(proc.pid)
        res["rss_end_mb"] = round(mem["rss"], 1)
    finally:
        procs.stop(replica)
        procs.stop(proc)
    res["load_after"] = load_avg()
    return res


def catch_up(args: argparse.Namespace, procs: Procs, work: Path, env: dict[str, str],
             size: Size, store: str, serverdir: Path, port: int, url: str | None,
             target: int | None) -> tuple[dict[str, Any], subprocess.Popen[bytes] | None]:
    """A node started empty, until its serial equals the primary's: a replica following the
    primary's changelog (SQLite), or a second node on the same database (PostgreSQL,
    which catches up before it answers)."""
    rdir = work / f"replica-{store}-{size.slug}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    rport = free_port()
    if store == "sqlite":
        shutil.copy(serverdir / ".secret", rdir / "secret")
        (rdir / "secret").chmod(0o600)
        argv = devpid_argv(rdir / "server", rport, "--primary-url",
                           f"http://127.0.0.1:{port}", "--secretfile", str(rdir / "secret"))
        kind = "replica over HTTP"
    else:
        assert url is not None
        (rdir / "server").mkdir()
        os.symlink(serverdir / "+blobs", rdir / "server" / "+blobs")
        argv = devpid_argv(rdir / "server", rport, "--store", url)
        kind = "second PostgreSQL node"
    t0 = time.perf_counter()
    proc = procs.spawn(f"replica-{store}-{size.slug}", argv, env)
    deadline = t0 + args.replica_timeout
    seen: int | None = None
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return {"kind": kind, "error": f"exited with {proc.returncode}"}, None
        seen = serial_of(rport, 2)
        if seen is not None and target is not None and seen >= target:
            secs = time.perf_counter() - t0
            return {"kind": kind, "seconds": round(secs, 2), "serials": target + 1,
                    "serials_per_s": round((target + 1) / secs, 1),
                    "rss_mb": round(memory_mb(proc.pid)["rss"], 1), "load": load_avg()}, proc
        time.sleep(0.1)
    secs = time.perf_counter() - t0
    return {"kind": kind, "timeout_s": args.replica_timeout, "reached": seen,
            "target": target, "load": load_avg(),
            "serials_per_s": round((seen or 0) / secs, 1)}, proc


# --------------------------------------------------------------------------- devpi-server
def measure_devpi(args: argparse.Namespace, procs: Procs, work: Path, size: Size,
                  version: str) -> dict[str, Any]:
    res: dict[str, Any] = {"server": "devpi-server", "store": "sqlite (devpi)",
                           "projects": size.projects, "files": size.files,
                           "version": version, "load_before": load_avg()}
    dump = generate_devpi_dump(CACHE / f"{size.slug}-devpi", size, version)
    env = clean_env(work / "home")
    serverdir = work / f"devpi-{size.slug}"
    shutil.rmtree(serverdir, ignore_errors=True)
    bindir = DevpiServer.bindir()
    res["import"] = run_measured([str(bindir / "devpi-import"), "--serverdir", str(serverdir),
                                  "--no-root-pypi", str(dump)], env, args.devpi_timeout)
    log(f"  devpi-import: {res['import']['seconds']} s rc={res['import']['rc']}")
    if res["import"]["rc"] != 0:
        res["error"] = f"devpi-import failed: {res['import'].get('output', '')[-400:]}"
        return res
    names = [project_name(i) for i in range(size.projects)]
    rng = random.Random(size.projects)
    sample = rng.sample(names, min(args.sample, len(names)))
    proc = None
    try:
        port = free_port()
        t0 = time.perf_counter()
        proc = procs.spawn(f"devpi-{size.slug}", [
            str(bindir / "devpi-server"), "--serverdir", str(serverdir), "--host",
            "127.0.0.1", "--port", str(port)], env)
        wait_ok(f"http://127.0.0.1:{port}/+api", proc, args.step_timeout)
        res["startup_s"] = [round(time.perf_counter() - t0, 3)]
        res["startup_median_s"] = res["startup_s"][0]
        time.sleep(0.5)
        res["rss_after_start_mb"] = round(memory_mb(proc.pid)["rss"], 1)
        log(f"  devpi start-up {res['startup_s']} s, RSS {res['rss_after_start_mb']} MB")
        res["pages"] = page_latencies(port, sample, args.passes)
        log(f"  devpi pages: uncached {res['pages']['uncached']['median_ms']} ms, "
            f"cached {res['pages']['cached']['median_ms']} ms")
        sweep_names = names if len(names) <= args.sweep else rng.sample(names, args.sweep)
        res["sweep"] = sweep_pages(port, sweep_names, args.sweep_seconds)
        mem = memory_mb(proc.pid)
        res["rss_after_sweep_mb"] = round(mem["rss"], 1)
        res["hwm_after_sweep_mb"] = round(mem["hwm"], 1)
        log(f"  devpi sweep {res['sweep']['pages']} pages: RSS {res['rss_after_sweep_mb']} MB")
        res["upload"] = upload_latencies(port, args.uploads, f"devpi{size.projects}", "")
        log(f"  devpi uploads: {res['upload']['median_ms']} ms median, failed "
            f"{res['upload']['failed']} {res['upload']['errors'][:1]}")
        export = work / f"devpi-export-{size.slug}"
        shutil.rmtree(export, ignore_errors=True)
    finally:
        procs.stop(proc)
    res["export"] = run_measured([str(bindir / "devpi-export"), "--serverdir", str(serverdir),
                                  str(export)], env, args.devpi_timeout)
    shutil.rmtree(export, ignore_errors=True)
    log(f"  devpi-export: {res['export']['seconds']} s")
    res["load_after"] = load_avg()
    return res


# --------------------------------------------------------------------------- report
def _g(res: dict[str, Any], *path: str) -> Any:
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


COLUMNS: list[tuple[str, tuple[str, ...], int]] = [
    ("import s", ("import", "seconds"), 1),
    ("import peak MB", ("import", "peak_rss_mb"), 0),
    ("start-up s", ("startup_median_s",), 2),
    ("index ready s", ("index_ready_s",), 2),
    ("max /+api ms while indexing", ("api_max_ms_while_indexing",), 0),
    ("RSS start MB", ("rss_after_start_mb",), 0),
    ("RSS sweep MB", ("rss_after_sweep_mb",), 0),
    ("page uncached ms (med/p95)", ("pages", "uncached"), 1),
    ("page cached ms (med/p95)", ("pages", "cached"), 2),
    ("upload ms (med/p95)", ("upload",), 1),
    ("export s", ("export", "seconds"), 1),
    ("export peak MB", ("export", "peak_rss_mb"), 0),
    ("gc s", ("gc", "seconds"), 2),
    ("gc peak MB", ("gc", "peak_rss_mb"), 0),
    ("catch-up s", ("replica", "seconds"), 1),
    ("load (1/5/15 min)", ("load_before",), 0),
]


def table(results: list[dict[str, Any]]) -> str:
    head = ["server / store", "projects", "files"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"{r['server']} / {r['store']}", _fmt(r["projects"]), _fmt(r["files"])]
        for _, path, digits in COLUMNS:
            v = _g(r, *path)
            if isinstance(v, dict) and "median_ms" in v:
                cells.append(f"{_fmt(v['median_ms'], digits)} / {_fmt(v['p95_ms'], digits)}")
            elif path == ("replica", "seconds") and v is None and isinstance(r.get("replica"),
                                                                                dict):
                rep = r["replica"]
                cells.append(f"timeout: serial {rep.get('reached')}/{rep.get('target')} "
                             f"after {rep.get('timeout_s'):.0f} s" if "timeout_s" in rep
                             else "n/a")
            else:
                cells.append(_fmt(v, digits))
        if r.get("error"):
            cells[3] = "failed: " + r["error"][:60].replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SERIES_STYLE = {
    "devpid / sqlite": ("#1f77b4", ""),
    "devpid / postgresql": ("#d62728", "6,3"),
    "devpi-server / sqlite (devpi)": ("#2ca02c", "2,3"),
}


def svg_plot(results: list[dict[str, Any]]) -> str:
    """Three small panels (start-up s, cached/uncached page ms, RSS MB) against projects,
    log-scaled x, one line per server/store. Plain SVG, no plotting library."""
    panels = [
        ("start-up (s, log)", lambda r: r.get("startup_median_s"), None, True),
        ("page latency, median (ms, log)", lambda r: _g(r, "pages", "cached", "median_ms"),
         lambda r: _g(r, "pages", "uncached", "median_ms"), True),
        ("RSS after start / sweep (MB)", lambda r: r.get("rss_after_start_mb"),
         lambda r: r.get("rss_after_sweep_mb"), False),
    ]
    w, h, pad_l, pad_r, pad_t, pad_b = 330, 260, 55, 12, 30, 45
    total_w = w * len(panels)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h + 60}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{total_w}" height="{h + 60}" fill="white"/>']
    series: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if not r.get("error"):
            series.setdefault(f"{r['server']} / {r['store']}", []).append(r)
    xs = sorted({r["projects"] for rs in series.values() for r in rs}) or [1]
    import math

    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
    lx0, lx1 = lx0 - 0.15, lx1 + 0.15  # points off the frame
    for p, (title, main, second, logy) in enumerate(panels):
        ox = p * w
        vals = [f(r) for rs in series.values() for r in rs for f in (main, second)
                if f is not None and f(r) is not None]
        top = max(vals) * 1.15 if vals else 1.0
        pw, ph = w - pad_l - pad_r, h - pad_t - pad_b
        if logy:  # whole decades around the values: devpi-server is 10-100x devpid here
            ly0 = math.floor(math.log10(max(min(vals), 1e-3))) if vals else 0
            ly1 = max(math.ceil(math.log10(top)), ly0 + 1)
            ticks = [10.0 ** e for e in range(ly0, ly1 + 1)]
        else:
            ticks = [top * k / 4 for k in range(5)]

        def X(n: float, ox: int = ox, pw: int = pw) -> float:
            return ox + pad_l + (math.log10(n) - lx0) / (lx1 - lx0) * pw

        def Y(v: float, top: float = top, ph: int = ph, logy: bool = logy,
              ticks: list[float] = ticks) -> float:
            if logy:
                lo, hi = math.log10(ticks[0]), math.log10(ticks[-1])
                return pad_t + ph - (math.log10(max(v, ticks[0])) - lo) / (hi - lo) * ph
            return pad_t + ph - v / top * ph

        out.append(f'<text x="{ox + w / 2}" y="18" text-anchor="middle" font-weight="bold">'
                   f"{title}</text>")
        out.append(f'<rect x="{ox + pad_l}" y="{pad_t}" width="{pw}" height="{ph}" '
                   'fill="none" stroke="#888"/>')
        for v in ticks:
            y = Y(v)
            out.append(f'<line x1="{ox + pad_l}" x2="{ox + pad_l + pw}" y1="{y:.1f}" '
                       f'y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ox + pad_l - 4}" y="{y + 4:.1f}" text-anchor="end">'
                       f"{v:.3g}</text>")
        for n in xs:
            out.append(f'<text x="{X(n):.1f}" y="{pad_t + ph + 14}" text-anchor="middle">'
                       f"{_short(n)}</text>")
        out.append(f'<text x="{ox + pad_l + pw / 2}" y="{pad_t + ph + 30}" '
                   'text-anchor="middle">projects (log scale)</text>')
        for name, rs in series.items():
            color, dash = SERIES_STYLE.get(name, ("#555", ""))
            rs = sorted(rs, key=lambda r: r["projects"])
            for f, width, opacity in ((main, 2, 1.0), (second, 1.2, 0.5)):
                if f is None:
                    continue
                pts = [(X(r["projects"]), Y(f(r))) for r in rs if f(r) is not None]
                if not pts:
                    continue
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<polyline points="{d}" fill="none" stroke="{color}" '
                           f'stroke-width="{width}" opacity="{opacity}"{dash_attr}/>')
                for x, y in pts:
                    out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}" '
                               f'opacity="{opacity}"/>')
    ly = h + 20
    for k, name in enumerate(series):
        color, dash = SERIES_STYLE.get(name, ("#555", ""))
        x = 20 + k * 260
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 30}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{x + 36}" y="{ly + 4}">{name}</text>')
    out.append(f'<text x="20" y="{ly + 24}" fill="#555">thick: start-up / cached page / RSS '
               'after start; faint: uncached page / RSS after the page sweep</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def goals(results: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, checked against the numbers (flat: largest/smallest size)."""
    lines = []
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["server"] == "devpid" and not r.get("error"):
            by.setdefault(r["store"], []).append(r)
    for store, rs in sorted(by.items()):
        rs.sort(key=lambda r: r["projects"])
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        for what, path in (("start-up", ("startup_median_s",)),
                           ("cached page median", ("pages", "cached", "median_ms")),
                           ("uncached page median", ("pages", "uncached", "median_ms")),
                           ("RSS after start", ("rss_after_start_mb",))):
            va, vb = _g(a, *path), _g(b, *path)
            if va and vb:
                lines.append(f"- {store}: {what} {_fmt(va, 2)} -> {_fmt(vb, 2)} from "
                             f"{_short(a['projects'])} to {_short(b['projects'])} projects "
                             f"(x{vb / va:.2f}; flat = within x1.2: "
                             f"{'yes' if vb / va <= 1.2 else 'NO'})")
    sq = {r["projects"]: r for r in by.get("sqlite", [])}
    for r in by.get("postgresql", []):
        s = sq.get(r["projects"]) or {}
        va, vb = _g(s, "pages", "cached", "median_ms"), _g(r, "pages", "cached", "median_ms")
        if va and vb:
            lines.append(f"- {_short(r['projects'])} projects: cached page PostgreSQL node "
                         f"{vb:.2f} ms vs SQLite {va:.2f} ms (x{vb / va:.2f}; goal within "
                         f"20%: {'yes' if vb / va <= 1.2 else 'NO'})")
    return lines


def write_report(doc: dict[str, Any], out_dir: Path) -> None:
    results = doc["results"]
    (out_dir / "scale.svg").write_text(svg_plot(results))
    meta = doc["meta"]
    md = [
        "# devpid at scale: costs against the amount of data",
        "",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Command: `{meta['command']}` (whole run {meta['seconds']:.0f} s)  ",
        f"Load average at the start / end: {meta['load_start']} / {meta['load_end']}  ",
        "",
        "Each row: a fresh server directory imported from a generated dump (devpid's export "
        "format; N projects in one stage index, F tiny sdists in all, one per version), one "
        "devpid process. start-up: process start to the first 200 on /+api (median of "
        f"{meta['starts']} starts). Page latencies: {meta['sample']} sampled projects, one "
        "keep-alive connection, pip's User-Agent, HTML; uncached = the first GET of each "
        f"after start, cached = {meta['passes']} more passes. RSS sweep: after GETting up to "
        f"{meta['sweep']} project pages. Uploads: {meta['uploads']} multipart POSTs of a new "
        "project each (what twine sends). export and gc are the CLI commands on the running "
        "server's directory, with their own peak RSS. catch-up: SQLite, a replica started "
        "empty following the primary over HTTP (fetches every file); PostgreSQL, a second node "
        "started empty on the same database (shared +blobs), until its serial equals the "
        "primary's. PostgreSQL is the throw-away cluster of .ci/pg-cluster (fsync=off, "
        "loopback); the dump goes onto it with `devpid import --store URL`.",
        "",
        table(results),
        "",
        "![](scale.svg)",
        "",
        "## Goals",
        "",
        *goals(results),
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in meta.get("notes", [])],
        "",
    ]
    (out_dir / "SCALE.md").write_text("\n".join(md))


# --------------------------------------------------------------------------- main
def machine() -> str:
    cpus = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 / 1024
    except OSError:
        mem = 0.0
    return f"{cpus} CPUs, {mem:.1f} GB RAM, Python {sys.version.split()[0]}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                   help=f"projects:files,... (default {DEFAULT_SIZES}; the issue's biggest: "
                   "100k:1m)")
    p.add_argument("--stores", default="sqlite,postgresql",
                   help="sqlite, postgresql or both (default both)")
    p.add_argument("--devpi-max", type=int, default=3000,
                   help="devpi-server only for sizes up to this many files (0: never)")
    p.add_argument("--sample", type=int, default=200, help="projects sampled for latencies")
    p.add_argument("--passes", type=int, default=5, help="cached passes over the sample")
    p.add_argument("--sweep", type=int, default=20000, help="pages in the RSS sweep (max)")
    p.add_argument("--sweep-seconds", type=float, default=30.0)
    p.add_argument("--uploads", type=int, default=20)
    p.add_argument("--starts", type=int, default=3, help="start-ups measured per row")
    p.add_argument("--no-replica", action="store_true")
    p.add_argument("--core-only", action="store_true",
                   help="import, start-up, pages, RSS and uploads only (no export, gc, "
                   "catch-up): the quick rerun of the key numbers")
    p.add_argument("--replica-timeout", type=float, default=120.0)
    p.add_argument("--step-timeout", type=float, default=900.0,
                   help="bound for each import/export/gc/start")
    p.add_argument("--devpi-timeout", type=float, default=600.0)
    p.add_argument("--max-minutes", type=float, default=40.0,
                   help="later rows are skipped once this is used up")
    p.add_argument("--out", type=Path, default=BENCH, help="where SCALE.md etc. go")
    p.add_argument("--json", type=Path, default=None, help="JSON path (default OUT/scale.json)")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the results page's notes (repeatable)")
    p.add_argument("--plot-only", action="store_true",
                   help="only redraw SCALE.md and scale.svg from the JSON")
    p.add_argument("--merge", action="store_true",
                   help="replace matching rows of an existing JSON instead of starting anew")
    return p.parse_args(argv)


_stop = False


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    json_path = args.json or args.out / "scale.json"
    if args.plot_only:
        doc = json.loads(json_path.read_text())
        doc["meta"]["notes"] = [n for n in doc["meta"].get("notes", []) if n not in args.note]
        doc["meta"]["notes"] += args.note
        if args.note:
            json_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        write_report(doc, args.out)
        return 0
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    budget = Budget(args.max_minutes)
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="devpid-scale-"))
    procs = Procs(work / "logs")
    pg = PgCluster() if "postgresql" in stores else None
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    if args.merge and json_path.exists():
        earlier = json.loads(json_path.read_text())
        results = earlier["results"]
        notes = [n for n in earlier["meta"].get("notes", []) if n not in args.note]
    notes += args.note
    load_start = load_avg()
    devpi_version = None
    try:
        if pg is not None:
            pg.start()
        if args.devpi_max > 0:
            devpi_version, why = ensure_devpi_venv(log)
            if devpi_version is None:
                notes.append(f"devpi-server not measured: {why}")
        for size in args.sizes:
            dump = generate_devpid_dump(CACHE / f"{size.slug}-devpid", size)
            for store in stores:
                if budget.left() <= 0:
                    notes.append(f"skipped {size.label} on {store}: --max-minutes used up")
                    continue
                log(f"devpid on {store}, {size.label} (load {load_avg()})")
                row = measure_devpid(args, procs, work, size, store, dump, pg)
                _put(results, row)
                _save(json_path, args, results, notes, t_start, load_start, devpi_version)
            if devpi_version and size.files <= args.devpi_max:
                if budget.left() <= 0:
                    notes.append(f"skipped devpi-server at {size.label}: time used up")
                    continue
                log(f"devpi-server, {size.label} (load {load_avg()})")
                try:
                    row = measure_devpi(args, procs, work, size, devpi_version)
                except Exception as e:  # one failed server must not lose the others' rows
                    row = {"server": "devpi-server", "store": "sqlite (devpi)",
                           "projects": size.projects, "files": size.files,
                           "error": f"{type(e).__name__}: {e}"}
                _put(results, row)
                _save(json_path, args, results, notes, t_start, load_start, devpi_version)
            elif devpi_version:
                notes.append(f"devpi-server not run at {size.label}: above --devpi-max "
                             f"{args.devpi_max} files (devpi-import time)")
    except KeyboardInterrupt:
        notes.append("interrupted")
    finally:
        procs.stop_all()
        if pg is not None:
            pg.stop()
        if args.keep_workdir:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc = _save(json_path, args, results, notes, t_start, load_start, devpi_version)
    write_report(doc, args.out)
    print(table(results))
    return 0


def _put(results: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Add a row; one of the same server, store and size is replaced, keeping the measures
    the new row lacks (a --core-only rerun keeps the earlier export, gc and catch-up, each
    with the load it ran under)."""
    key = (row["server"], row["store"], row["projects"], row["files"])
    old = [r for r in results if (r["server"], r["store"], r["projects"], r["files"]) == key]
    if old and not row.get("error"):
        kept = {k: v for k, v in old[0].items() if k not in row}
        if kept:
            row["kept_from_earlier_run"] = sorted(kept)
        row = {**kept, **row}
    results[:] = [r for r in results
                  if (r["server"], r["store"], r["projects"], r["files"]) != key]
    results.append(row)
    results.sort(key=lambda r: (r["server"] != "devpid", r["store"], r["projects"]))


def _save(path: Path, args: argparse.Namespace, results: list[dict[str, Any]],
          notes: list[str], t_start: float, load_start: str,
          devpi_version: str | None) -> dict[str, Any]:
    doc = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
            "machine": machine(),
            "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
            "seconds": time.time() - t_start,
            "load_start": load_start,
            "load_end": load_avg(),
            "sample": args.sample, "passes": args.passes, "sweep": args.sweep,
            "uploads": args.uploads, "starts": args.starts,
            "devpi_server": devpi_version,
            "notes": notes,
        },
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return doc


if __name__ == "__main__":
    sys.exit(main())
