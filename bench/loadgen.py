"""HTTP load and latency measurement for bench/run.py: wrk, or a small asyncio fallback.

Every function refuses URLs that are not on the loopback interface, and every loop is
bounded both in time and in request count.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")

_WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path?query) of a loopback URL; anything else is refused."""
    u = urllib.parse.urlsplit(url)
    if u.hostname not in LOOPBACK:
        raise ValueError(f"refusing non-loopback URL {url!r}")
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, u.port or 80, path


@dataclass
class Response:
    status: int | None
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""


def http_get(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 30.0,
    method: str = "GET",
    body: bytes | None = None,
) -> Response:
    """One request (no redirects followed)."""
    host, port, path = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(
            r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.perf_counter() - t0
        )
    except (OSError, http.client.HTTPException) as e:
        return Response(None, {}, b"", time.perf_counter() - t0, f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))]


@dataclass
class LatencyResult:
    ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.ms) and set(self.statuses) == {"200"}

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.ms) if self.ms else None


def sequential_latency(
    url: str, headers: dict[str, str] | None = None, *, n: int = 50, max_seconds: float = 20.0
) -> LatencyResult:
    """Up to ``n`` GETs one after another over a keep-alive connection, within max_seconds."""
    host, port, path = split_url(url)
    res = LatencyResult()
    conn: http.client.HTTPConnection | None = None
    start = time.perf_counter()
    try:
        for _ in range(n):
            if time.perf_counter() - start > max_seconds:
                break
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=max(5.0, max_seconds))
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                r.read()
                status = str(r.status)
                if (r.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            res.ms.append((time.perf_counter() - t0) * 1000)
            res.statuses[status] = res.statuses.get(status, 0) + 1
    finally:
        if conn is not None:
            conn.close()
    return res


@dataclass
class LoadResult:
    tool: str
    requests: int = 0
    seconds: float = 0.0
    bytes: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    error: str = ""
    steal_pct: float | None = None  # CPU steal while it ran (set by bench/run.py)
    server_cpu_pct: float | None = None  # the server's CPU, % of one core (bench/run.py)
    server_sys_pct: float | None = None  # the kernel's part of it

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors == 0 and not self.error

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "MBps": round(self.mbps, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "error": self.error,
            "steal_pct": self.steal_pct,
            "server_cpu_pct": self.server_cpu_pct,
            "server_sys_pct": self.server_sys_pct,
        }


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def ensure_wrk(log: Any) -> bool:
    """wrk on PATH, installing Debian's package if we are root and it is missing."""
    if have_wrk():
        return True
    if shutil.which("apt-get") and _is_root():
        log("wrk missing: apt-get install -y wrk")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["apt-get", "install", "-y", "wrk"],
                capture_output=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
                check=False,
            )
    return have_wrk()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def run_wrk(
    url: str, headers: dict[str, str], *, conns: int, duration: float, timeout: float = 30.0
) -> LoadResult:
    split_url(url)
    threads = min(2, conns)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(_WRK_LUA)
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            f"{int(timeout)}s",
            "-s",
            str(script),
        ]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        argv.append(url)
        try:
            cp = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=duration + timeout + 30,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return LoadResult("wrk", error="wrk timed out")
    m = re.search(r"^WRKJSON (\{.*\})$", cp.stdout, re.M)
    if not m:
        return LoadResult("wrk", error=(cp.stdout + cp.stderr)[-500:])
    d = json.loads(m.group(1))
    errors = sum(
        d[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    )
    return LoadResult(
        "wrk",
        requests=d["requests"],
        seconds=d["duration_us"] / 1e6,
        bytes=d["bytes"],
        errors=errors,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
    )


async def _conn_loop(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    max_requests: int,
    lat: list[float],
    counters: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline and counters["requests"] < max_requests:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            size = len(head)
            if "content-length" in hdrs:
                n = int(hdrs["content-length"])
                await reader.readexactly(n)
                size += n
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    line_b = await reader.readuntil(b"\r\n")
                    n = int(line_b.split(b";")[0], 16)
                    await reader.readexactly(n + 2)
                    size += len(line_b) + n + 2
                    if n == 0:
                        break
            lat.append((time.perf_counter() - t0) * 1000)
            counters["requests"] += 1
            counters["bytes"] += size
            if status >= 400:
                counters["errors"] += 1
            conn_hdr = hdrs.get("connection", "").lower()
            http10 = lines[0].startswith("HTTP/1.0")
            if conn_hdr == "close" or (http10 and conn_hdr != "keep-alive"):
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _async_load(url: str, headers: dict[str, str], conns: int, duration: float) -> LoadResult:
    host, port, path = split_url(url)
    hdr = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{hdr}\r\n".encode()
    lat: list[float] = []
    counters = {"requests": 0, "bytes": 0, "errors": 0}
    t0 = time.perf_counter()
    deadline = t0 + duration
    tasks = [
        asyncio.create_task(_conn_loop(host, port, request, deadline, 10_000_000, lat, counters))
        for _ in range(conns)
    ]
    done = await asyncio.wait_for(
        asyncio.gather(*tasks, return_exceptions=True), timeout=duration + 60
    )
    seconds = time.perf_counter() - t0
    failures = [d for d in done if isinstance(d, BaseException)]
    return LoadResult(
        "python-asyncio",
        requests=counters["requests"],
        seconds=seconds,
        bytes=counters["bytes"],
        errors=counters["errors"] + len(failures),
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        error=repr(failures[0]) if failures else "",
    )


def load(
    url: str, headers: dict[str, str], *, conns: int, duration: float, use_wrk: bool
) -> LoadResult:
    """``conns`` keep-alive connections hammering ``url`` for ``duration`` seconds."""
    if use_wrk:
        return run_wrk(url, headers, conns=conns, duration=duration)
    try:
        return asyncio.run(_async_load(url, headers, conns, duration))
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        return LoadResult("python-asyncio", error=f"{type(e).__name__}: {e}")
