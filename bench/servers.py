"""Processes for bench/run.py: the upstream, nginx (static or in front of devpid), devpid
and devpi-server, each started in its own process group and stopped by that group's id."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from bench.loadgen import Response, http_get

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
TOOLS = Path(sys.executable).parent  # the environment running the harness: devpid, twine, uv
ROOT_PASSWORD = "bench-root-pw"
USER, PASSWORD = "bench", "bench-pw"
DEVPI_SPEC = "devpi-server>=6,<7"

Log = Callable[..., None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for every child: no pip/uv/twine/devpi configuration, no proxies."""
    drop = ("PIP_", "UV_", "TWINE_", "DEVPI", "PYTHONPATH")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        PIP_NO_INPUT="1",
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(home / "uv-cache"),
        UV_PYTHON_DOWNLOADS="never",
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NO_COLOR="1",
    )
    env.update(extra)
    return env


# --------------------------------------------------------------------------- process groups
class Procs:
    """Every long-running child, so that all of them can be stopped on any exit path."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        stdout: int | IO[bytes] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        out: int | IO[bytes]
        # The log file stays open in the child only.
        out = open(self.logdir / f"{name}.log", "ab") if stdout is None else stdout  # noqa: SIM115
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT if stdout is None else None,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if stdout is None and not isinstance(out, int):
            out.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
        """SIGTERM to the child's own process group, then SIGKILL after ``timeout``."""
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        # Leftovers of the group (e.g. nginx workers) once the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            self.stop(proc, timeout=5.0)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def process_cpu_seconds(pids: list[int], proc: str = "/proc") -> tuple[float, float]:
    """(user + system, system) CPU seconds used so far by ``pids`` and their children.

    Read around a load sample, it says how busy the server was: a server near 100% of one
    core, most of it system time, is held back by the kernel's send path, not by its own code.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = system = 0
    seen: set[int] = set()
    for pid in pids:
        for p in [pid, *_children(pid)]:
            if p in seen:
                continue
            seen.add(p)
            try:
                with open(f"{proc}/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user, sys_ = int(fields[11]), int(fields[12])
            except (OSError, ValueError, IndexError):
                continue
            total += user + sys_
            system += sys_
    return total / tick, system / tick


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) in MB of ``pid`` plus its children, from /proc/PID/status."""
    total = {"rss": 0.0, "hwm": 0.0}
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total["rss"] += int(line.split()[1]) / 1024
                    elif line.startswith("VmHWM:"):
                        total["hwm"] += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll until ``url`` answers 200; seconds waited. Raises if the process dies or times out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        if http_get(url, {"Accept": "application/json"}, timeout=2).status == 200:
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def run_cmd(
    argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> tuple[int | str, float, str]:
    """(returncode or "timeout", seconds, output tail) of a bounded command."""
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return cp.returncode, time.perf_counter() - t0, (cp.stdout + cp.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        return "timeout", time.perf_counter() - t0, text[-2000:]


# --------------------------------------------------------------------------- nginx
def _nginx_main(workdir: Path, http_body: str) -> str:
    for d in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes auto;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
{http_body}
}}
"""


def static_nginx_conf(workdir: Path, port: int, static_dir: Path, files_dir: Path) -> str:
    """nginx serving the upstream's files and a static copy of its simple pages.

    ``/simple/P/`` answers index.json when the Accept header asks for PEP 691 JSON
    (pip and uv do), else index.html.
    """
    body = f"""    types {{
        text/html html;
        application/vnd.pypi.simple.v1+json json;
        application/octet-stream whl;
    }}
    default_type application/octet-stream;
    map $http_accept $simple_index {{
        "~application/vnd\\.pypi\\.simple\\.(v1|latest)\\+json" index.json;
        default index.html;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /simple/ {{
            root {static_dir};
            index $simple_index;
        }}
        location /files/ {{
            alias {files_dir}/;
        }}
    }}"""
    return _nginx_main(workdir, body)


def devpid_nginx_conf(workdir: Path, serverdir: Path, devpid_port: int, port: int) -> str:
    """The site devpid's gen-config renders (loopback only, cache in the workdir), included
    in a minimal nginx.conf, unchanged."""
    from devpid.genconfig import GenConfigOptions, render

    site = render(
        GenConfigOptions(
            serverdir=serverdir,
            port=devpid_port,
            host="127.0.0.1",
            nginx_port=port,
            nginx_address="127.0.0.1",
            server_name="127.0.0.1",
            cache_dir=workdir / "page-cache",
        )
    )["devpid-nginx.conf"]
    if f"listen 127.0.0.1:{port};" not in site:
        raise RuntimeError("generated nginx site does not listen on loopback only")
    (workdir).mkdir(parents=True, exist_ok=True)
    (workdir / "devpid-site.conf").write_text(site)
    body = "    include /etc/nginx/mime.types;\n" if Path("/etc/nginx/mime.types").exists() else ""
    body += f"    include {workdir}/devpid-site.conf;"
    return _nginx_main(workdir, body)


@dataclass
class Nginx:
    procs: Procs
    workdir: Path
    conf: str
    port: int
    ready_path: str = "/simple/"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> float:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.conf)
        t0 = time.perf_counter()
        self.proc = self.procs.spawn(
            f"nginx-{self.workdir.name}",
            [
                "nginx",
                "-p",
                f"{self.workdir}/",
                "-c",
                str(conf),
                "-e",
                str(self.workdir / "error.log"),
            ],
            clean_env(self.workdir / "home"),
        )
        wait_ok(self.base + self.ready_path, self.proc, timeout)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.procs.stop(self.proc)
        self.proc = None


# --------------------------------------------------------------------------- devpi-likes
@dataclass
class IndexServer:
    """devpid or devpi-server: init a fresh serverdir, start, configure over devpi's JSON API."""

    name: str
    procs: Procs
    workdir: Path
    upstream_url: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serverdir(self) -> Path:
        return self.workdir / "server"

    def init_argv(self) -> list[str]:
        raise NotImplementedError

    def start_argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return clean_env(self.workdir / "home")

    def init(self, timeout: float = 120.0) -> float:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rc, secs, out = run_cmd(self.init_argv(), self.env(), timeout)
        if rc != 0:
            raise RuntimeError(f"{self.name} init failed ({rc}): {out}")
        return secs

    def start(self, timeout: float = 90.0) -> float:
        """Start the server; seconds from process start to the first 200 on /+api."""
        self.port = free_port()
        t0 = time.perf_counter()
        self.proc = self.procs.spawn(
            f"{self.name}-{self.workdir.name}", self.start_argv(), self.env()
        )
        wait_ok(self.base + "/+api", self.proc, timeout)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.procs.stop(self.proc)
        self.proc = None

    def memory(self) -> dict[str, float]:
        return memory_mb(self.proc.pid) if self.proc else {"rss": 0.0, "hwm": 0.0}

    # -- devpi JSON API -------------------------------------------------------------
    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        user: str | None = None,
        timeout: float = 60.0,
    ) -> Response:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if user is not None:
            cred = f"{user}:{self.tokens[user]}".encode()
            headers["X-Devpi-Auth"] = base64.b64encode(cred).decode()
        data = None if body is None else json.dumps(body).encode()
        return http_get(self.base + path, headers, timeout=timeout, method=method, body=data)

    def login(self, user: str, password: str) -> None:
        r = self.api("POST", "/+login", {"user": user, "password": password})
        if r.status != 200:
            raise RuntimeError(f"login {user}: {r.status} {r.body[:300]!r}")
        self.tokens[user] = json.loads(r.body)["result"]["password"]

    def must(self, method: str, path: str, body: Any = None, user: str | None = None) -> None:
        r = self.api(method, path, body, user)
        if r.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {r.status} {r.body[:300]!r}")

    def ensure_mirror(self, stage: str, url: str) -> None:
        r = self.api("GET", f"/{stage}?no_projects=")
        if r.status == 200:
            self.must("PATCH", f"/{stage}", [f"mirror_url={url}"], "root")
        else:
            self.must("PUT", f"/{stage}", {"type": "mirror", "mirror_url": url}, "root")

    def configure(self) -> None:
        """root/pypi mirrors the upstream; bench/a -> bench/b -> bench/c -> root/pypi;
        bench/dev (no bases) takes the uploads."""
        self.login("root", ROOT_PASSWORD)
        self.ensure_mirror("root/pypi", self.upstream_url)
        self.must(
            "PUT", f"/{USER}", {"password": PASSWORD, "email": "bench@example.invalid"}, "root"
        )
        self.login(USER, PASSWORD)
        for stage, bases in (
            ("c", ["root/pypi"]),
            ("b", [f"{USER}/c"]),
            ("a", [f"{USER}/b"]),
            ("dev", []),
        ):
            self.must("PUT", f"/{USER}/{stage}", {"type": "stage", "bases": bases}, USER)

    def mirror_simple(self, stage: str = "root/pypi") -> str:
        return f"{self.base}/{stage}/+simple/"


class Devpid(IndexServer):
    # Extra twistd options for every devpid started (run.py's --devpid-workers).
    extra_args: ClassVar[list[str]] = []
    def init_argv(self) -> list[str]:
        return [
            str(TOOLS / "devpid"),
            "init",
            "--serverdir",
            str(self.serverdir),
            "--root-password",
            ROOT_PASSWORD,
            "--mirror-url",
            self.upstream_url,
        ]

    def start_argv(self) -> list[str]:
        return [
            str(TOOLS / "twistd"),
            "-n",
            "--pidfile=",
            "devpid",
            "--serverdir",
            str(self.serverdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # The benchmark's upstream is on loopback, which mirrors refuse by default.
            "--allow-private-addresses",
            *self.extra_args,
        ]


class DevpiServer(IndexServer):
    @staticmethod
    def bindir() -> Path:
        return VENVS / "devpi-server" / "bin"

    def init_argv(self) -> list[str]:
        # No default root/pypi: it would point at the public index. configure() creates it.
        return [
            str(self.bindir() / "devpi-init"),
            "--serverdir",
            str(self.serverdir),
            "--root-passwd",
            ROOT_PASSWORD,
            "--no-root-pypi",
        ]

    def start_argv(self) -> list[str]:
        return [
            str(self.bindir() / "devpi-server"),
            "--serverdir",
            str(self.serverdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]


def ensure_devpi_venv(log: Log, timeout: float = 600.0) -> tuple[str | None, str]:
    """(version, "") with devpi-server 6 installed in bench/.venvs/devpi-server (cached),
    or (None, reason)."""
    venv = VENVS / "devpi-server"
    exe = venv / "bin" / "devpi-server"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def version() -> str | None:
        if not exe.exists():
            return None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            cp = subprocess.run(
                [str(exe), "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if cp.returncode == 0 and cp.stdout.strip().startswith("6."):
                return cp.stdout.strip()
        return None

    found = version()
    if found:
        return found, ""
    log(f"installing {DEVPI_SPEC} into {venv} (cached for later runs)")
    base_python = getattr(sys, "_base_executable", sys.executable)
    rc, _, out = run_cmd([base_python, "-m", "venv", "--clear", str(venv)], env, 120)
    if rc != 0:
        return None, f"venv creation failed: {out[-300:]}"
    rc, _, out = run_cmd([str(venv / "bin" / "pip"), "install", "-q", DEVPI_SPEC], env, timeout)
    if rc != 0:
        return None, f"pip install {DEVPI_SPEC} failed ({rc}): {out.strip()[-300:]}"
    found = version()
    return (found, "") if found else (None, "devpi-server --version failed after install")
