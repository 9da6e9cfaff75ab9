"""Side-by-side benchmark of devpid, devpi-server 6 and nginx-static, on loopback only.

    python bench/run.py [--quick] [--rounds N] [--json OUT]

See bench/README.md for what is measured and how. Every server runs in its own process
group and is stopped on every exit path (normal end, exception, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.loadgen import LoadResult, http_get, sequential_latency  # noqa: E402
from bench.servers import (  # noqa: E402
    BENCH,
    PASSWORD,
    TOOLS,
    USER,
    Devpid,
    DevpiServer,
    IndexServer,
    Nginx,
    Procs,
    clean_env,
    devpid_nginx_conf,
    ensure_devpi_venv,
    free_port,
    process_cpu_seconds,
    run_cmd,
    static_nginx_conf,
)

SERVERS = ["nginx", "devpi", "devpid", "devpid+nginx"]
LABELS = {
    "nginx": "nginx-static",
    "devpi": "devpi-server 6",
    "devpid": "devpid",
    "devpid+nginx": "devpid behind nginx",
}
PIP_UA = "pip/25.0 (devpid-bench)"
HTML = {"Accept": "text/html", "User-Agent": PIP_UA}
JSON = {"Accept": "application/vnd.pypi.simple.v1+json", "User-Agent": PIP_UA}
PAGE_PROJECT = "bench-small-01"
FILES = {"1.25MB": "bench-file-1m", "5MB": "bench-file-5m"}
COLD_FILE = "bench-file-50m"
UPLOADS = 200


@dataclass
class Measure:
    key: str
    title: str
    unit: str
    higher_better: bool
    digits: int = 1


MEASURES: list[Measure] = [
    Measure("page_html_rps", "cached project page, HTML, wrk 32 conns", "req/s", True, 0),
    Measure("page_html_p99", "  p99 latency (HTML)", "ms", False, 1),
    Measure("page_json_rps", "cached project page, PEP 691 JSON, wrk 32 conns", "req/s", True, 0),
    Measure("page_json_p99", "  p99 latency (JSON)", "ms", False, 1),
    Measure("file_1.25MB_c1", "cached 1.25 MB wheel, 1 client", "MB/s", True, 0),
    Measure("file_1.25MB_c32", "cached 1.25 MB wheel, 32 clients", "MB/s", True, 0),
    Measure("file_5MB_c1", "cached 5 MB wheel, 1 client", "MB/s", True, 0),
    Measure("file_5MB_c32", "cached 5 MB wheel, 32 clients", "MB/s", True, 0),
    Measure("cold_50MB", "first (uncached) GET of the 50 MB wheel", "s", False, 2),
    Measure("pip_cold", "pip download --no-deps, 15 wheels, cold", "s", False, 2),
    Measure("pip_warm", "pip download --no-deps, 15 wheels, warm", "s", False, 2),
    Measure("uv_cold", "uv pip install --target, 15 wheels, cold", "s", False, 2),
    Measure("uv_warm", "uv pip install --target, 15 wheels, warm", "s", False, 2),
    Measure("many_first", "2,000-version page via a->b->c->mirror, first GET", "ms", False, 0),
    Measure(
        "many_median", "2,000-version page via a->b->c->mirror, cached (median)", "ms", False, 1
    ),
    Measure("upload_200", "200 twine uploads (one twine run, password auth)", "s", False, 2),
    Measure("startup", "start-up (process start -> first 200 on /+api)", "s", False, 2),
    Measure("rss_after", "RSS after the run (VmRSS)", "MB", False, 0),
    Measure("hwm_after", "peak RSS during the run (VmHWM)", "MB", False, 0),
    Measure("big_first", "780k-name root list, first fetch", "s", False, 2),
    Measure("big_second", "780k-name root list, second request", "s", False, 3),
    Measure("big_rss", "RSS after the 780k root list (VmRSS)", "MB", False, 0),
    Measure("big_hwm", "peak RSS after the 780k root list (VmHWM)", "MB", False, 0),
]
BY_KEY = {m.key: m for m in MEASURES}


@dataclass
class Target:
    key: str
    text: str
    check: Callable[[dict[str, float | None]], bool | None]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _ge(x: float | None, limit: float) -> bool | None:
    return None if x is None else x >= limit


def _le(x: float | None, limit: float) -> bool | None:
    return None if x is None else x <= limit


def _both(a: bool | None, b: bool | None) -> bool | None:
    return None if a is None or b is None else a and b


TARGETS: list[Target] = [
    Target(
        "page_html_rps",
        ">=10x devpi; behind nginx >=0.5x nginx",
        lambda m: _both(
            _ge(_ratio(m["devpid"], m["devpi"]), 10),
            _ge(_ratio(m["devpid+nginx"], m["nginx"]), 0.5),
        ),
    ),
    Target(
        "page_json_rps",
        ">=10x devpi; behind nginx >=0.5x nginx",
        lambda m: _both(
            _ge(_ratio(m["devpid"], m["devpi"]), 10),
            _ge(_ratio(m["devpid+nginx"], m["nginx"]), 0.5),
        ),
    ),
    *[
        Target(
            f"file_{size}_{c}",
            ">=5x devpi; behind nginx >=0.9x nginx",
            lambda m: _both(
                _ge(_ratio(m["devpid"], m["devpi"]), 5),
                _ge(_ratio(m["devpid+nginx"], m["nginx"]), 0.9),
            ),
        )
        for size in FILES
        for c in ("c1", "c32")
    ],
    Target("pip_warm", "<=1.05x nginx", lambda m: _le(_ratio(m["devpid"], m["nginx"]), 1.05)),
    Target("many_median", "<100 ms", lambda m: _le(m["devpid"], 100)),
    Target("upload_200", "<2.5 s", lambda m: _le(m["devpid"], 2.5)),
    Target("startup", "<1 s", lambda m: _le(m["devpid"], 1.0)),
    Target("rss_after", "<100 MB", lambda m: _le(m["devpid"], 100)),
    Target("big_second", "<1 s", lambda m: _le(m["devpid"], 1.0)),
    Target("big_rss", "<300 MB", lambda m: _le(m["devpid"], 300)),
    Target("big_hwm", "<300 MB", lambda m: _le(m["devpid"], 300)),
]
TARGET_BY_KEY = {t.key: t for t in TARGETS}


# --------------------------------------------------------------------------- bookkeeping
class Stop(Exception):
    """SIGTERM/SIGHUP: unwind through the finally blocks like Ctrl-C does."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, server: str, value: float | None, **extra: Any) -> None:
        self.raw.append({"measure": key, "server": server, "value": value, **extra})
        if value is None:
            return
        self.samples.setdefault(key, {}).setdefault(server, []).append(value)
        m = BY_KEY[key]
        log(f"  [{server}] {key} = {value:.{max(m.digits, 2)}f} {m.unit}")

    def note(self, key: str, server: str, text: str) -> None:
        self.notes.setdefault(key, {})[server] = text
        log(f"  [{server}] {key}: {text}")

    def stats(self, key: str, server: str) -> dict[str, float] | None:
        vals = self.samples.get(key, {}).get(server)
        if not vals:
            return None
        return {
            "median": statistics.median(vals),
            "min": min(vals),
            "max": max(vals),
            "n": len(vals),
        }

    def medians(self, key: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for s in SERVERS:
            st = self.stats(key, s)
            out[s] = st["median"] if st else None
        return out


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Ctx:
    args: argparse.Namespace
    procs: Procs
    work: Path
    up: dict[str, Any]
    res: Results
    budget: Budget
    use_wrk: bool
    wheels: list[Path]
    devpi_ok: bool

    def phase_ok(self, what: str, server: str) -> bool:
        if self.budget.left() > 0:
            return True
        self.res.note("budget", server, f"skipped {what}: time budget used up")
        return False


@contextlib.contextmanager
def guarded(ctx: Ctx, key: str, server: str) -> Iterator[None]:
    """A failing measurement is noted and the run goes on."""
    try:
        yield
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        ctx.res.note(key, server, f"failed: {type(e).__name__}: {str(e)[:300]}")


# --------------------------------------------------------------------------- measures
def wrk(
    ctx: Ctx, url: str, headers: dict[str, str], conns: int, pids: list[int]
) -> LoadResult:
    """One load sample, with the machine's steal and the server's CPU (``pids``) during it."""
    before, cpu_before, t0 = cpu_times(), process_cpu_seconds(pids), time.monotonic()
    lr = loadgen.load(url, headers, conns=conns, duration=ctx.args.duration, use_wrk=ctx.use_wrk)
    lr.steal_pct = steal_percent(before, cpu_times())
    lr.server_cpu_pct, lr.server_sys_pct = cpu_share(
        cpu_before, process_cpu_seconds(pids), time.monotonic() - t0
    )
    return lr


def cpu_share(
    before: tuple[float, float], after: tuple[float, float], seconds: float
) -> tuple[float | None, float | None]:
    """(total, system) CPU between two process_cpu_seconds readings, in % of one core."""
    if seconds <= 0 or after[0] < before[0]:
        return None, None
    return (
        round(100.0 * (after[0] - before[0]) / seconds, 1),
        round(100.0 * (after[1] - before[1]) / seconds, 1),
    )


def measure_pages(ctx: Ctx, server: str, page_url: str, pids: list[int]) -> None:
    for fmt, headers in (("html", HTML), ("json", JSON)):
        key = f"page_{fmt}_rps"
        r = http_get(page_url, headers)
        want = "json" if fmt == "json" else "html"
        ctype = r.headers.get("content-type", "")
        if r.status != 200 or want not in ctype:
            ctx.res.note(key, server, f"{page_url}: {r.status} {ctype!r} {r.error}")
            continue
        lr = wrk(ctx, page_url, headers, 32, pids)
        if not lr.ok:
            ctx.res.note(key, server, f"load errors: {lr.as_dict()}")
        if lr.requests:
            ctx.res.add(key, server, lr.rps, load=lr.as_dict())
            ctx.res.add(f"page_{fmt}_p99", server, lr.p99_ms)


def measure_files(ctx: Ctx, server: str, urls: dict[str, str], pids: list[int]) -> None:
    for size, url in urls.items():
        expect = ctx.up["sized"][FILES[size]]
        r = http_get(url, {"Accept": "*/*"}, timeout=120)
        if r.status != 200 or len(r.body) != expect["size"]:
            ctx.res.note(
                f"file_{size}_c1",
                server,
                f"warm-up GET {url}: {r.status} {len(r.body)} bytes {r.error}",
            )
            continue
        for conns in (1, 32):
            key = f"file_{size}_c{conns}"
            lr = wrk(ctx, url, {"Accept": "*/*"}, conns, pids)
            if not lr.ok:
                ctx.res.note(key, server, f"load errors: {lr.as_dict()}")
            if lr.requests and lr.bytes_per_request >= expect["size"]:
                ctx.res.add(key, server, lr.mbps, load=lr.as_dict())
            elif lr.requests:
                ctx.res.note(key, server, f"responses smaller than the file: {lr.as_dict()}")


def _download_dir(ctx: Ctx) -> Path:
    return Path(tempfile.mkdtemp(prefix="dl-", dir=ctx.work))


def pip_download(ctx: Ctx, simple_url: str) -> tuple[float | None, str]:
    out = _download_dir(ctx)
    argv = [
        str(TOOLS / "pip"),
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--timeout",
        "60",
        "-q",
        "-d",
        str(out),
        "-i",
        simple_url,
        *ctx.up["small"],
    ]
    rc, secs, tail = run_cmd(argv, clean_env(ctx.work / "home"), 300)
    n = len(list(out.iterdir()))
    shutil.rmtree(out, ignore_errors=True)
    if rc != 0 or n != len(ctx.up["small"]):
        return None, f"pip rc={rc} files={n}: {tail[-400:]}"
    return secs, ""


def uv_install(ctx: Ctx, simple_url: str) -> tuple[float | None, str]:
    out = _download_dir(ctx)
    argv = [
        str(TOOLS / "uv"),
        "pip",
        "install",
        "--no-deps",
        "--no-cache",
        "-q",
        "--python",
        sys.executable,
        "--target",
        str(out),
        "--index-url",
        simple_url,
        *ctx.up["small"],
    ]
    rc, secs, tail = run_cmd(argv, clean_env(ctx.work / "home"), 300)
    n = len([p for p in out.iterdir() if p.name.endswith(".dist-info")])
    shutil.rmtree(out, ignore_errors=True)
    if rc != 0 or n != len(ctx.up["small"]):
        return None, f"uv rc={rc} dist-infos={n}: {tail[-400:]}"
    return secs, ""


def measure_installers(ctx: Ctx, server: str, simple_url: str, tool: str) -> None:
    """One cold run, then ``--warm-runs`` warm ones (each a sample: a warm run is mostly the
    client's own start-up, so single samples are noisy)."""
    fn = pip_download if tool == "pip" else uv_install
    for phase in ("cold", *["warm"] * ctx.args.warm_runs):
        secs, err = fn(ctx, simple_url)
        if secs is None:
            ctx.res.note(f"{tool}_{phase}", server, err)
        else:
            ctx.res.add(f"{tool}_{phase}", server, secs)


def file_urls(page_url: str, projects: dict[str, str]) -> dict[str, str]:
    """Download URL of each project's 1.0.0 wheel, from its (JSON) simple page."""
    out: dict[str, str] = {}
    for label, project in projects.items():
        url = urllib.parse.urljoin(page_url, f"{project}/")
        r = http_get(url, JSON, timeout=60)
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {r.body[:200]!r}")
        doc = json.loads(r.body)
        files = [f for f in doc["files"] if f["filename"].endswith(".whl")]
        if not files:
            raise RuntimeError(f"{url}: no wheel listed")
        out[label] = urllib.parse.urljoin(url, files[0]["url"]).split("#")[0]
    return out


def twine_upload(ctx: Ctx, server: IndexServer) -> tuple[float | None, str]:
    argv = [
        str(TOOLS / "twine"),
        "upload",
        "--repository-url",
        f"{server.base}/{USER}/dev/",
        "-u",
        USER,
        "-p",
        PASSWORD,
        "--non-interactive",
        "--disable-progress-bar",
        *map(str, ctx.wheels),
    ]
    rc, secs, tail = run_cmd(argv, clean_env(ctx.work / "home"), 900)
    if rc != 0:
        return None, f"twine rc={rc}: {tail[-400:]}"
    r = http_get(f"{server.base}/{USER}/dev/+simple/", HTML)
    listed = r.body.count(b"<a ")
    want = len({w.name.split("-")[0] for w in ctx.wheels})
    if listed < want:
        return None, f"after upload the index lists {listed} projects, expected {want}"
    return secs, ""


# --------------------------------------------------------------------------- rounds
def round_nginx(ctx: Ctx, rnd: int) -> None:
    work, port = ctx.work / f"nginx-static-{rnd}", free_port()
    conf = static_nginx_conf(work, port, Path(ctx.up["static_dir"]), Path(ctx.up["files_dir"]))
    ng = Nginx(ctx.procs, work, conf, port)
    try:
        ctx.res.add("startup", "nginx", ng.start())
        simple = ng.base + "/simple/"
        with guarded(ctx, "pip_warm", "nginx"):
            measure_installers(ctx, "nginx", simple, "pip")
        with guarded(ctx, "uv_warm", "nginx"):
            measure_installers(ctx, "nginx", simple, "uv")
        with guarded(ctx, "page_html_rps", "nginx"):
            measure_pages(ctx, "nginx", f"{simple}{PAGE_PROJECT}/", pids_of(ng))
        with guarded(ctx, "file_5MB_c1", "nginx"):
            measure_files(ctx, "nginx", file_urls(simple, FILES), pids_of(ng))
        with guarded(ctx, "many_median", "nginx"):
            lat = sequential_latency(f"{simple}{ctx.up['many']}/", HTML, n=ctx.args.lat_n)
            if lat.ok and lat.median_ms is not None:
                ctx.res.add("many_median", "nginx", lat.median_ms)
        if ng.proc:
            ctx.res.add("rss_after", "nginx", _mem(ng.proc.pid)["rss"])
    finally:
        ng.stop()


def pids_of(*servers: Nginx | IndexServer) -> list[int]:
    """The running servers' process ids (their children are counted with them)."""
    return [s.proc.pid for s in servers if s.proc is not None]


def _mem(pid: int) -> dict[str, float]:
    from bench.servers import memory_mb

    return memory_mb(pid)


def round_index_server(ctx: Ctx, kind: str, rnd: int) -> None:
    cls: type[IndexServer] = Devpid if kind == "devpid" else DevpiServer
    name = kind
    srv = cls(name, ctx.procs, ctx.work / f"{name}-{rnd}", ctx.up["url"])
    try:
        srv.init()
        ctx.res.add("startup", name, srv.start())
        srv.configure()
        simple = srv.mirror_simple()
        with guarded(ctx, "pip_cold", name):
            measure_installers(ctx, name, simple, "pip")
        with guarded(ctx, "cold_50MB", name):
            url = file_urls(simple, {"50MB": COLD_FILE})["50MB"]
            r = http_get(url, {"Accept": "*/*"}, timeout=300)
            if r.status == 200 and len(r.body) == ctx.up["sized"][COLD_FILE]["size"]:
                ctx.res.add("cold_50MB", name, r.seconds)
            else:
                ctx.res.note("cold_50MB", name, f"{r.status} {len(r.body)} bytes {r.error}")
        if ctx.phase_ok("pages", name):
            with guarded(ctx, "page_html_rps", name):
                measure_pages(ctx, name, f"{simple}{PAGE_PROJECT}/", pids_of(srv))
        urls: dict[str, str] = {}
        if ctx.phase_ok("files", name):
            with guarded(ctx, "file_5MB_c1", name):
                urls = file_urls(simple, FILES)
                measure_files(ctx, name, urls, pids_of(srv))
        if kind == "devpid" and ctx.phase_ok("behind nginx", name):
            behind_nginx(ctx, srv, rnd, urls)
        if ctx.phase_ok("inheritance", name):
            with guarded(ctx, "many_median", name):
                url = f"{srv.base}/{USER}/a/+simple/{ctx.up['many']}/"
                first = http_get(url, HTML, timeout=120)
                if first.status != 200:
                    raise RuntimeError(f"{url}: {first.status} {first.error}")
                ctx.res.add("many_first", name, first.seconds * 1000)
                lat = sequential_latency(url, HTML, n=ctx.args.lat_n, max_seconds=30)
                if lat.median_ms is not None:
                    ctx.res.add(
                        "many_median",
                        name,
                        lat.median_ms,
                        statuses=lat.statuses,
                        bytes=len(first.body),
                    )
        if ctx.phase_ok("uploads", name):
            with guarded(ctx, "upload_200", name):
                secs, err = twine_upload(ctx, srv)
                if secs is None:
                    ctx.res.note("upload_200", name, err)
                else:
                    ctx.res.add("upload_200", name, secs)
        mem = srv.memory()
        ctx.res.add("rss_after", name, mem["rss"])
        ctx.res.add("hwm_after", name, mem["hwm"])
        if not ctx.args.skip_big and ctx.phase_ok("780k root list", name):
            with guarded(ctx, "big_first", name):
                root_list(ctx, srv)
    finally:
        srv.stop()
    if not ctx.phase_ok("uv", name):
        return
    # uv needs a cold server too: a second, fresh serverdir.
    srv2 = cls(name, ctx.procs, ctx.work / f"{name}-{rnd}-uv", ctx.up["url"])
    try:
        srv2.init()
        ctx.res.add("startup", name, srv2.start())
        srv2.login("root", "bench-root-pw")
        srv2.ensure_mirror("root/pypi", ctx.up["url"])
        with guarded(ctx, "uv_cold", name):
            measure_installers(ctx, name, srv2.mirror_simple(), "uv")
    finally:
        srv2.stop()


def behind_nginx(ctx: Ctx, srv: IndexServer, rnd: int, urls: dict[str, str]) -> None:
    work = ctx.work / f"nginx-devpid-{rnd}"
    port = free_port()
    ng = Nginx(
        ctx.procs,
        work,
        devpid_nginx_conf(work, srv.serverdir, srv.port, port),
        port,
        ready_path="/+api",
    )
    name = "devpid+nginx"
    try:
        ng.start()
        with guarded(ctx, "page_html_rps", name):
            measure_pages(
                ctx, name, f"{ng.base}/root/pypi/+simple/{PAGE_PROJECT}/", pids_of(ng, srv)
            )
        with guarded(ctx, "file_5MB_c1", name):
            via = {k: ng.base + urllib.parse.urlsplit(u).path for k, u in urls.items()}
            r = http_get(next(iter(via.values())), {"Accept": "*/*"}, timeout=60)
            if "x-accel-redirect" in r.headers:
                raise RuntimeError("X-Accel-Redirect reached the client")
            measure_files(ctx, name, via, pids_of(ng, srv))
        with guarded(ctx, "pip_warm", name):
            for _ in range(ctx.args.warm_runs):
                secs, err = pip_download(ctx, f"{ng.base}/root/pypi/+simple/")
                if secs is None:
                    ctx.res.note("pip_warm", name, err)
                else:
                    ctx.res.add("pip_warm", name, secs)
    finally:
        ng.stop()


def root_list(ctx: Ctx, srv: IndexServer) -> None:
    name = srv.name
    srv.ensure_mirror("root/big", ctx.up["big_url"])
    url = f"{srv.base}/root/big/+simple/"
    first = http_get(url, HTML, timeout=ctx.args.big_timeout)
    if first.status != 200:
        ctx.res.note(
            "big_first",
            name,
            f"{first.status} after {first.seconds:.1f}s {first.error} {first.body[:200]!r}",
        )
        return
    count = first.body.count(b"<a ")
    if count < ctx.up["big_extra"]:
        ctx.res.note(
            "big_first", name, f"root list has {count} links, expected >= {ctx.up['big_extra']}"
        )
    ctx.res.add("big_first", name, first.seconds, links=count)
    second = http_get(url, HTML, timeout=ctx.args.big_timeout)
    if second.status == 200:
        ctx.res.add("big_second", name, second.seconds)
    else:
        ctx.res.note("big_second", name, f"{second.status} {second.error}")
    mem = srv.memory()
    ctx.res.add("big_rss", name, mem["rss"])
    ctx.res.add("big_hwm", name, mem["hwm"])


# --------------------------------------------------------------------------- report
def fmt_stat(st: dict[str, float] | None, digits: int) -> str:
    if st is None:
        return "n/a"
    med = f"{st['median']:,.{digits}f}"
    if st["n"] > 1:
        return f"{med} ({st['min']:,.{digits}f}-{st['max']:,.{digits}f})"
    return med


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def table(res: Results) -> list[list[str]]:
    rows = [
        [
            "measure",
            "unit",
            *(LABELS[s] for s in SERVERS),
            "devpid/devpi",
            "devpid/nginx",
            "devpid+nginx/nginx",
            "target",
            "met",
        ]
    ]
    for m in MEASURES:
        if m.key not in res.samples and m.key not in res.notes:
            continue
        med = res.medians(m.key)
        cells = [fmt_stat(res.stats(m.key, s), m.digits) for s in SERVERS]
        t = TARGET_BY_KEY.get(m.key)
        met = "" if t is None else {True: "yes", False: "NO", None: "n/a"}[t.check(med)]
        rows.append(
            [
                m.title,
                m.unit,
                *cells,
                fmt_ratio(_ratio(med["devpid"], med["devpi"])),
                fmt_ratio(_ratio(med["devpid"], med["nginx"])),
                fmt_ratio(_ratio(med["devpid+nginx"], med["nginx"])),
                t.text if t else "",
                met,
            ]
        )
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def cpu_times(stat: str | None = None) -> dict[str, int]:
    """The machine's CPU time counters (jiffies) from the aggregate line of /proc/stat."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    for line in stat.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return dict(zip(names, values, strict=False))
    return {}


def steal_percent(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two snapshots.

    On a shared VM this swings from 0 to over 30% within minutes, and every server in the
    run slows down with it; a run with much steal is a noisy run, whatever its medians say.
    """
    if not before or not after or "steal" not in after:
        return None
    total = sum(after.values()) - sum(before.values())
    if total <= 0:
        return None
    return round(100.0 * (after["steal"] - before.get("steal", 0)) / total, 1)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(devpi_version: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {"devpi-server": devpi_version}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cp = subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        out["nginx"] = cp.stderr.strip().split("/")[-1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cp = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
        out["wrk"] = (cp.stdout + cp.stderr).split()[1] if cp.stdout or cp.stderr else None
    from importlib.metadata import version

    for dist in ("devpid", "pip", "twine", "uv"):
        with contextlib.suppress(Exception):
            out[dist] = version(dist)
    return out


STEAL_NOISY_PCT = 5.0


def steal_lines(pct: float | None, raw: list[dict[str, Any]] | None = None) -> list[str]:
    """What the results page says about CPU steal during the run (nothing if unknown).

    With the raw samples it also names the load measurements that ran under high steal,
    since a burst of a few seconds can spoil one number and leave the run's total low.
    """
    if pct is None:
        return []
    line = f"CPU steal during the run: {pct}% of all CPU time."
    if pct >= STEAL_NOISY_PCT:
        line += (
            f" That is {STEAL_NOISY_PCT:.0f}% or more: other guests on this host took CPU"
            " from the run, so treat its numbers as noisy and run it again later."
        )
    hit = [
        (r["load"]["steal_pct"], f"{LABELS.get(r['server'], r['server'])} {r['measure']}")
        for r in raw or []
        if isinstance(r.get("load"), dict)
        and (r["load"].get("steal_pct") or 0) >= STEAL_NOISY_PCT
    ]
    if hit:
        worst = ", ".join(f"{name} ({p}%)" for p, name in sorted(hit, reverse=True)[:5])
        line += (
            f" Load samples with {STEAL_NOISY_PCT:.0f}% steal or more: {len(hit)};"
            f" worst: {worst}."
        )
    return [line, ""]


def cpu_table(raw: list[dict[str, Any]]) -> list[str]:
    """The servers' CPU during each load measurement, medians over the rounds.

    It shows where a number's ceiling is: one connection is served by one process, so a
    server at ~100% of a core, nearly all of it system time (the kernel's loopback send path),
    cannot be made faster by its own code, whatever the other server reaches.
    """
    cells: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in raw:
        load = r.get("load")
        if not isinstance(load, dict) or load.get("server_cpu_pct") is None:
            continue
        pair = (float(load["server_cpu_pct"]), float(load.get("server_sys_pct") or 0.0))
        cells.setdefault(r["measure"], {}).setdefault(r["server"], []).append(pair)
    if not cells:
        return []
    rows = [["measure", *(LABELS[s] for s in SERVERS)]]
    for m in MEASURES:
        per = cells.get(m.key)
        if not per:
            continue
        row = [m.title]
        for s in SERVERS:
            vals = per.get(s)
            if not vals:
                row.append("-")
                continue
            total = statistics.median(v[0] for v in vals)
            system = statistics.median(v[1] for v in vals)
            row.append(f"{total:.0f}% (system {system:.0f}%)")
        rows.append(row)
    return [
        "Server CPU during the load measurements (median, % of one core; processes and their"
        " children, devpid behind nginx counts both):",
        "",
        *markdown(rows).splitlines(),
        "",
    ]


def write_results_md(path: Path, meta: dict[str, Any], rows: list[list[str]], res: Results) -> None:
    m = meta["machine"]
    text = [
        "# devpid benchmark results",
        "",
        f"Date: {meta['date']}  ",
        f"Machine: {m['nproc']} CPUs, {m['model']}, {m['mem_gb']} GB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}  ",
        f"Command: `{meta['command']}` ({meta['rounds']} round(s), "
        f"{meta['duration_s']} s per load measurement, load generator {meta['loadgen']}, "
        f"whole run {meta['elapsed_s']:.0f} s)  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        "",
        *steal_lines(meta.get("cpu_steal_pct"), res.raw),
        "Medians of the rounds, (min-max) when there was more than one. Ratios are of "
        "medians; for times and memory lower is better, so a ratio below 1 favours devpid. "
        "All traffic on 127.0.0.1; servers and load generator share the machine's CPUs.",
        "",
        markdown(rows),
        "",
        *cpu_table(res.raw),
    ]
    notes = [
        f"- {LABELS.get(s, s)} / {k}: {v}" for k, per in res.notes.items() for s, v in per.items()
    ]
    if notes:
        text += ["Notes:", "", *notes, ""]
    path.write_text("\n".join(text))


# --------------------------------------------------------------------------- main
def start_upstream(procs: Procs, cache: Path, big_extra: int) -> dict[str, Any]:
    out = cache / "upstream.json"
    out.unlink(missing_ok=True)
    with open(out, "wb") as fh:
        proc = procs.spawn(
            "upstream",
            [
                sys.executable,
                str(BENCH / "upstream.py"),
                "--dir",
                str(cache / "upstream"),
                "--big-extra",
                str(big_extra),
            ],
            clean_env(cache / "home"),
            stdout=fh,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream exited: {proc.returncode}; see {procs.logdir}")
        text = out.read_text() if out.exists() else ""
        if text.endswith("\n"):
            info: dict[str, Any] = json.loads(text.splitlines()[0])
            return info
        time.sleep(0.1)
    raise RuntimeError("upstream did not start within 300 s")


def make_upload_wheels(cache: Path) -> list[Path]:
    from tests.support import pkgbuild

    out = cache / "uploads"
    wheels = []
    for i in range(UPLOADS):
        name, version = f"bench-up-{i % 40:03d}", f"1.0.{i // 40}"
        path = out / pkgbuild.wheel_filename(name, version)
        if not path.exists():
            pkgbuild.make_wheel(out, name, version, summary="bench upload")
        wheels.append(path)
    return wheels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1 round, 2 s per load measurement, 20 sequential GETs"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per wrk measurement (default 5, quick 2)",
    )
    p.add_argument(
        "--lat-n",
        type=int,
        default=None,
        help="sequential GETs for the 2,000-version page (default 50, quick 20)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=BENCH / "results" / "latest.json",
        help="where to write the JSON results (default bench/results/latest.json)",
    )
    p.add_argument(
        "--md",
        type=Path,
        default=BENCH / "RESULTS.md",
        help="markdown summary (default bench/RESULTS.md; '-' for none)",
    )
    p.add_argument("--warm-runs", type=int, default=3,
                   help="warm pip/uv runs per server and round, each one sample (default 3)")
    p.add_argument("--no-devpi", action="store_true", help="skip devpi-server")
    p.add_argument("--devpid-workers", type=int, default=1,
                   help="devpid's --workers (default 1: one process, like the others)")
    p.add_argument("--skip-big", action="store_true", help="skip the 780k-name root list")
    p.add_argument(
        "--big-extra",
        type=int,
        default=780_000,
        help="names in the big upstream's root list (default 780000)",
    )
    p.add_argument(
        "--big-timeout",
        type=float,
        default=180.0,
        help="seconds allowed for one 780k root list request (default 180)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time budget; later phases are skipped past it (default 45, quick 15)",
    )
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator")
    p.add_argument("--keep-workdir", action="store_true", help="keep server dirs and logs")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.lat_n = a.lat_n or (20 if a.quick else 50)
    a.max_minutes = a.max_minutes or (15.0 if a.quick else 45.0)
    for name in ("rounds", "warm_runs", "devpid_workers"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.devpid_workers > 1:
        Devpid.extra_args = ["--workers", str(args.devpid_workers)]
    t_start = time.monotonic()
    cpu_start = cpu_times()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    cache = BENCH / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="devpid-bench-"))
    procs = Procs(work / "logs")
    res = Results()
    devpi_version: str | None = None
    use_wrk = False
    try:
        use_wrk = not args.no_wrk and loadgen.ensure_wrk(log)
        if not use_wrk:
            log("wrk not available: using the asyncio load generator")
        if not shutil.which("nginx"):
            raise SystemExit("nginx is needed (apt-get install -y nginx)")
        if args.no_devpi:
            devpi_reason = "skipped (--no-devpi)"
        else:
            devpi_version, devpi_reason = ensure_devpi_venv(log)
        if devpi_version is None:
            res.note("devpi", "devpi", f"n/a: {devpi_reason}")
        log("starting the upstream (generates packages on the first run)")
        up = start_upstream(procs, cache, args.big_extra)
        wheels = make_upload_wheels(cache)
        ctx = Ctx(
            args,
            procs,
            work,
            up,
            res,
            Budget(args.max_minutes * 60),
            use_wrk,
            wheels,
            devpi_version is not None,
        )
        kinds = ["devpid", *(["devpi"] if ctx.devpi_ok else [])]
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds}: nginx-static")
            with guarded(ctx, "round", "nginx"):
                round_nginx(ctx, rnd)
            for kind in kinds:
                if not ctx.phase_ok(f"round {rnd}", kind):
                    continue
                log(f"round {rnd}/{args.rounds}: {kind}")
                with guarded(ctx, "round", kind):
                    round_index_server(ctx, kind, rnd)
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        raise
    except Stop as e:
        log(f"{e}: stopping servers")
        return 1
    finally:
        procs.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work dir kept: {work}")

    rows = table(res)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(devpi_version),
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "loadgen": "wrk" if use_wrk else "python-asyncio",
        "elapsed_s": time.monotonic() - t_start,
        "cpu_steal_pct": steal_percent(cpu_start, cpu_times()),
    }
    summary = {
        m.key: {
            "title": m.title,
            "unit": m.unit,
            "higher_is_better": m.higher_better,
            "servers": {s: res.stats(m.key, s) for s in SERVERS if res.stats(m.key, s)},
            "target": TARGET_BY_KEY[m.key].text if m.key in TARGET_BY_KEY else None,
            "target_met": (
                TARGET_BY_KEY[m.key].check(res.medians(m.key)) if m.key in TARGET_BY_KEY else None
            ),
        }
        for m in MEASURES
        if m.key in res.samples
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "notes": res.notes, "samples": res.raw},
            indent=1,
            default=str,
        )
    )
    if str(args.md) != "-":
        write_results_md(args.md, meta, rows, res)
    print(markdown(rows))
    for key, per in res.notes.items():
        for s, v in per.items():
            print(f"note: {LABELS.get(s, s)} / {key}: {v}")
    for line in steal_lines(meta["cpu_steal_pct"], res.raw)[:1]:
        log(line)
    log(
        f"done in {meta['elapsed_s']:.0f} s; JSON: {args.json}"
        + ("" if str(args.md) == "-" else f"; markdown: {args.md}")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
