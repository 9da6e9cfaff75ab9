"""``devpid gen-config``: the generated files work with the real nginx, systemd and sh.

nginx runs for real on loopback with its own prefix, config, pid file and logs under tmp_path,
in front of a stand-in backend that answers like devpid does (X-Accel-Redirect for files).
The nginx helpers here (``nginx_binary``, ``free_port``, ``write_nginx_main_conf``,
``start_nginx``, ``stop_nginx``) know nothing about devpid, so end-to-end tests can reuse them.
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devpid import genconfig
from devpid.genconfig import GenConfigOptions, render, write

# --------------------------------------------------------------------------- nginx helpers


def nginx_binary() -> str | None:
    """The nginx executable, also where root's sbin is not on PATH."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_nginx() -> str:
    """The nginx executable, or skip the test (CI installs it; .ci/run says when it could not)."""
    found = nginx_binary()
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light) - nginx tests skipped")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_nginx_main_conf(prefix: Path, site_conf: Path) -> Path:
    """A main nginx.conf with every writable path below ``prefix``, including ``site_conf``.

    As root the workers run as root too (the default "nobody" could not read a pytest tmp
    dir); as another user the ``user`` directive is left out.
    """
    for sub in ("logs", "tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix}/logs/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {site_conf};
}}
""",
        encoding="utf-8",
    )
    return conf


def nginx_command(nginx: str, prefix: Path, conf: Path, *extra: str) -> list[str]:
    """nginx with its prefix, config and early error log (-e) all under ``prefix``."""
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "logs/error.log"),
            *extra]


def nginx_test_config(nginx: str, prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf``; returns the finished process (output in stderr)."""
    return subprocess.run(nginx_command(nginx, prefix, conf, "-t"), capture_output=True,
                          text=True, timeout=30, check=False)


@dataclass
class RunningNginx:
    """A foreground nginx master started by ``start_nginx``."""

    proc: subprocess.Popen[bytes]
    prefix: Path
    conf: Path
    port: int

    def error_log(self) -> str:
        """nginx's error log so far, for assertion messages."""
        path = self.prefix / "logs/error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_nginx(conf_dir: Path, site_conf: Path, port: int, timeout: float = 10.0) -> RunningNginx:
    """Start nginx (prefix ``conf_dir``) serving ``site_conf``, wait until ``port`` accepts."""
    nginx = require_nginx()
    conf = write_nginx_main_conf(conf_dir, site_conf)
    proc = subprocess.Popen(nginx_command(nginx, conf_dir, conf), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = RunningNginx(proc=proc, prefix=conf_dir, conf=conf, port=port)
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_nginx(running)
            raise RuntimeError(f"nginx did not come up on port {port}:\n{running.error_log()}")
        time.sleep(0.05)
    return running


def stop_nginx(running: RunningNginx, timeout: float = 10.0) -> None:
    """Fast shutdown (SIGTERM) of the master we started, SIGKILL if it hangs."""
    if running.proc.poll() is None:
        running.proc.terminate()
        try:
            running.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            running.proc.kill()
            running.proc.wait(timeout)


# ------------------------------------------------------------------ stand-in devpid backend

PAGE = "<!DOCTYPE html><html><body>" + "<a href='/x/+f/pkg'>pkg-1.0.tar.gz</a>\n" * 50
FILE_TYPE = "application/x-devpid-test"  # nothing nginx would ever choose by itself


@dataclass
class Backend:
    """Answers like devpid: pages as text/html, ``/x/+f/<sha256>`` via X-Accel-Redirect."""

    blob_hash: str
    seen: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def headers_for(self, path: str) -> dict[str, str]:
        """The (lower-cased) request headers of the last request for ``path``."""
        for headers in reversed(self.seen):
            if headers[":path"] == path:
                return headers
        raise AssertionError(f"the backend never saw {path}: {self.seen}")


def _make_handler(backend: Backend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers[":path"] = self.path
            backend.seen.append(headers)
            if self.headers.get("X-Devpid-Check"):
                # nginx's file check: name the blob for /u/i/+f/..., nothing for the rest.
                self.send_response(200)
                if self.path.startswith("/u/i/+f/") and "missing" not in self.path:
                    h = backend.blob_hash
                    self.send_header("X-Devpid-Blob", f"/{h[0:2]}/{h[2:4]}/{h}")
                    self.send_header("X-Devpid-Type", FILE_TYPE)
                    self.send_header("ETag", f'"{h[:32]}"')
                else:
                    self.send_header("X-Accel-Expires", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            accel = self.headers.get("X-Devpid-Accel")
            if "/+f/" in self.path and "missing" in self.path:
                body = b'{"message": "no such file"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if "/+f/" in self.path and accel:
                h = backend.blob_hash
                self.send_response(200)
                self.send_header("X-Accel-Redirect", f"{accel}{h[0:2]}/{h[2:4]}/{h}")
                self.send_header("Content-Type", FILE_TYPE)
                self.send_header("ETag", f'"{h}"')
                self.send_header("Cache-Control", "max-age=31536000, immutable")
                self.send_header("Content-Disposition", 'attachment; filename="pkg-1.0.tar.gz"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def backend() -> Iterator[Backend]:
    """The stand-in backend on a free loopback port, in a thread."""
    b = Backend(blob_hash=hashlib.sha256(b"release file").hexdigest())
    b.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(b))
    b.server.daemon_threads = True
    thread = threading.Thread(target=b.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield b
    finally:
        b.server.shutdown()
        b.server.server_close()
        thread.join(5)


# ------------------------------------------------------------------------------ helpers


def _options(tmp_path: Path, **kw: object) -> GenConfigOptions:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    defaults: dict[str, object] = dict(serverdir=tmp_path / "srv", bindir=bindir,
                                       backup_dir=tmp_path / "backups",
                                       cache_dir=tmp_path / "nginx-cache")
    defaults.update(kw)
    return GenConfigOptions(**defaults)  # type: ignore[arg-type]


def _get(port: int, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": f"localhost:{port}", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def _stub(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(0o755)


# ---------------------------------------------------------------------------------- tests


def test_render_and_write(tmp_path: Path) -> None:
    opts = _options(tmp_path, port=4000, nginx_port=8080, server_name="pypi.example.test")
    texts = render(opts)
    assert set(texts) == {"devpid.service", "devpid-nginx.conf", "devpid-cron"}
    for text in texts.values():
        assert "{{" not in text and "}}" not in text
    assert "--outside-url http://pypi.example.test:8080" in texts["devpid.service"]
    assert "server 127.0.0.1:4000;" in texts["devpid-nginx.conf"]
    assert f"alias {tmp_path}/srv/+blobs/;" in texts["devpid-nginx.conf"]

    out = tmp_path / "out" / "nested"
    paths = write(opts, out)
    assert [p.name for p in paths] == list(texts)
    for p in paths:
        assert p.read_text() == texts[p.name]
        assert p.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(out)) == sorted(texts)  # no temp files left behind


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    genconfig.add_arguments(parser)
    args = parser.parse_args(["--serverdir", str(tmp_path / "srv"), "--port", "3999",
                              "--output", str(tmp_path / "gen")])
    assert genconfig.main(args) == 0
    printed = capsys.readouterr().out
    for name in ("devpid.service", "devpid-nginx.conf", "devpid-cron"):
        assert str(tmp_path / "gen" / name) in printed
    assert "systemctl enable --now devpid" in printed

    bad = parser.parse_args(["--serverdir", str(tmp_path), "--server-name", "a;b",
                             "--output", str(tmp_path / "bad")])
    assert genconfig.main(bad) == 2
    assert "server_name" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"server_name": "localhost\nlisten 81"}, "server_name"),
        ({"server_name": "a;b"}, "server_name"),
        ({"server_name": "x{"}, "server_name"),
        ({"serverdir": Path("relative/srv")}, "absolute"),
        ({"backup_dir": Path("backups")}, "absolute"),
        ({"serverdir": Path("/srv/dev pid")}, "unsafe"),
        ({"serverdir": Path("/srv/a;b")}, "unsafe"),
        ({"serverdir": Path("/srv/{x}")}, "unsafe"),
        ({"outside_url": "http://x/\nExecStartPre=/bin/sh"}, "outside_url"),
        ({"outside_url": "ftp://x"}, "outside_url"),
        ({"user": "dev pid"}, "user"),
        ({"port": 0}, "port"),
        ({"nginx_port": 70000}, "nginx_port"),
        ({"max_upload_size": "1g; root /"}, "max_upload_size"),
        ({"host": "127.0.0.1;"}, "host"),
        ({"keep_days": -1}, "keep_days"),
    ],
)
def test_bad_values_raise(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(_options(tmp_path, **kw))


def test_template_dir_has_templates() -> None:
    base = genconfig.template_dir()
    for name in genconfig.TEMPLATES:
        assert (base / name).is_file()


def test_template_dir_prefers_wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    # In a wheel the templates are force-included as devpid/_templates/ (see pyproject.toml).
    package = tmp_path / "site-packages" / "devpid"
    for name in genconfig.TEMPLATES:
        target = package / "_templates" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(genconfig.template_dir() / name, target)
    monkeypatch.setattr(genconfig, "__file__", str(package / "genconfig.py"))
    assert genconfig.template_dir() == package / "_templates"
    assert render(_options(tmp_path))["devpid-cron"]
    (package / "_templates" / "cron" / "devpid-cron.in").unlink()
    with pytest.raises(FileNotFoundError):
        genconfig.template_dir()


def test_protect_home(tmp_path: Path) -> None:
    unit = render(_options(tmp_path, serverdir=Path("/srv/devpid")))["devpid.service"]
    assert "\nProtectHome=read-only\n" in unit
    unit = render(_options(tmp_path, serverdir=Path("/home/ci/devpid")))["devpid.service"]
    assert "\nProtectHome=" not in unit
    assert "ReadWritePaths=/home/ci/devpid\n" in unit


def test_systemd_unit(tmp_path: Path) -> None:
    opts = _options(tmp_path)
    _stub(opts.bindir / "twistd", "exit 0\n")
    (path,) = [p for p in write(opts, tmp_path / "out") if p.name == "devpid.service"]

    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    service = parser["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0] == f"{opts.bindir}/twistd" and Path(exec_start[0]).is_absolute()
    assert exec_start[1:5] == ["-n", "--pidfile=", "devpid", "--serverdir"]
    assert service["Restart"] == "on-failure" and service["Type"] == "simple"
    assert service["ReadWritePaths"] == str(opts.serverdir)
    assert service["Environment"] == "PYTHONUNBUFFERED=1"
    assert parser["Install"]["WantedBy"] == "multi-user.target"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd-analyze exits 0 on unknown keys or bad values and only logs them as
    # "<file>:<line>: ..."; it fails on a missing ExecStart binary (hence the stub twistd),
    # and does not check that the user exists. So: no line-located complaint about our file.
    result = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    ours = [line for line in result.stderr.splitlines()
            if line.startswith((f"{path}:", "devpid.service:"))]
    assert result.returncode == 0 and not ours, result.stderr


def test_cron_file(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    opts = _options(tmp_path, keep_days=3)
    argv_log = tmp_path / "argv.log"
    # Stand-in for `devpid export --serverdir S TARGET`: records argv, creates TARGET.
    _stub(opts.bindir / "devpid",
          f'for a in "$@"; do printf "%s\\n" "$a"; done > {argv_log}\n'
          'for a in "$@"; do last="$a"; done\nmkdir -p "$last"\n')
    text = render(opts)["devpid-cron"]
    assert text.endswith("\n")

    jobs = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    assert len(fields) == 7
    minute, hour, dom, month, dow, user, command = fields
    assert re.fullmatch(r"\d+", minute) and re.fullmatch(r"\d+", hour)
    assert (dom, month, dow) == ("*", "*", "*")
    assert user == "devpid"
    # cron turns an unescaped % into a newline: every % must be escaped, then unescaped.
    assert re.search(r"(?<!\\)%", command) is None
    assert command.count(r"\%") == 5
    command = command.replace(r"\%", "%")

    for name, age in [("devpid-20000101-0000", "10 days ago"), ("devpid-old2", "5 days ago"),
                      ("devpid-recent", "1 day ago"), ("other-old", "30 days ago")]:
        (backups / name).mkdir()
        (backups / name / "data").write_text("x")
        subprocess.run(["touch", "-d", age, str(backups / name)], check=True)
    (backups / "devpid-oldfile").write_text("a file, not a dump dir")
    subprocess.run(["touch", "-d", "9 days ago", str(backups / "devpid-oldfile")], check=True)

    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=30, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"})

    argv = argv_log.read_text().splitlines()
    assert argv[:3] == ["export", "--serverdir", str(opts.serverdir)]
    (target,) = argv[3:]
    assert re.fullmatch(rf"{re.escape(str(backups))}/devpid-\d{{8}}-\d{{4}}", target), target
    remaining = sorted(os.listdir(backups))
    assert remaining == sorted(["devpid-recent", "other-old", Path(target).name])


def test_nginx_config_test(tmp_path: Path) -> None:
    nginx = require_nginx()
    site = tmp_path / "out" / "devpid-nginx.conf"
    write(_options(tmp_path, nginx_port=free_port()), tmp_path / "out")
    conf = write_nginx_main_conf(tmp_path / "nginx", site)
    result = nginx_test_config(nginx, tmp_path / "nginx", conf)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def _nginx_with_blob(tmp_path: Path, backend: Backend, **opts: object) -> tuple[RunningNginx, int]:
    """nginx with the generated site in front of the stand-in backend, its blob on disk."""
    require_nginx()
    h = backend.blob_hash
    blob = tmp_path / "srv" / "+blobs" / h[0:2] / h[2:4] / h
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"release file")
    nginx_port = free_port()
    write(_options(tmp_path, serverdir=tmp_path / "srv", port=backend.port,
                   nginx_port=nginx_port, **opts), tmp_path / "out")
    running = start_nginx(tmp_path / "nginx", tmp_path / "out" / "devpid-nginx.conf",
                          nginx_port)
    return running, nginx_port


def test_nginx_in_front_of_backend(tmp_path: Path, backend: Backend) -> None:
    running, nginx_port = _nginx_with_blob(tmp_path, backend)
    h = backend.blob_hash
    try:
        # A release file: body from disk, devpid's headers kept; a client's own
        # X-Devpid-Accel is replaced by nginx's.
        status, headers, body = _get(nginx_port, f"/x/+f/{h}/pkg-1.0.tar.gz",
                                     {"X-Devpid-Accel": "/etc/", "Accept-Encoding": "gzip"})
        assert (status, body) == (200, b"release file"), running.error_log()
        assert headers["content-type"] == FILE_TYPE
        assert headers["etag"] == f'"{h}"'
        assert headers["cache-control"] == "max-age=31536000, immutable"
        assert headers["content-disposition"] == 'attachment; filename="pkg-1.0.tar.gz"'
        assert "content-encoding" not in headers
        assert "x-accel-redirect" not in headers
        seen = backend.headers_for(f"/x/+f/{h}/pkg-1.0.tar.gz")
        assert seen["x-devpid-accel"] == "/+devpid-blobs/"
        assert seen["x-outside-url"] == f"http://localhost:{nginx_port}"
        assert seen["host"] == f"localhost:{nginx_port}"
        assert seen["x-real-ip"] == "127.0.0.1"
        assert "127.0.0.1" in seen["x-forwarded-for"]

        # Ranges are served from the file too (resumed downloads).
        status, headers, body = _get(nginx_port, f"/x/+f/{h}/pkg-1.0.tar.gz",
                                     {"Range": "bytes=0-6"})
        assert (status, body) == (206, b"release")
        assert headers["content-type"] == FILE_TYPE

        # Pages are compressed when the client accepts it.
        status, headers, body = _get(nginx_port, "/root/pypi/+simple/",
                                     {"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers.get("content-encoding") == "gzip"
        assert gzip.decompress(body).decode() == PAGE

        # The blob location is internal: not reachable from outside.
        status, _, _ = _get(nginx_port, f"/+devpid-blobs/{h[0:2]}/{h[2:4]}/{h}")
        assert status == 404
        assert backend.headers_for("/root/pypi/+simple/")  # the page went through, nothing else
        assert not any(s[":path"].startswith("/+devpid-blobs/") for s in backend.seen)
    finally:
        stop_nginx(running)
    assert running.proc.returncode is not None


def test_nginx_sends_checked_files_itself(tmp_path: Path, backend: Backend) -> None:
    """/USER/INDEX/+f/...: one cheap check answer from devpid, reused for the page-cache
    seconds, then nginx sends the blob like a static file; the rest goes to devpid whole."""
    running, nginx_port = _nginx_with_blob(tmp_path, backend, page_cache_seconds=60)
    h = backend.blob_hash
    url = f"/u/i/+f/{h[:3]}/{h[3:16]}/pkg-1.0.tar.gz"
    try:
        for _ in range(3):  # a client cannot pose as nginx's check
            status, headers, body = _get(nginx_port, url, {"X-Devpid-Check": "1"})
            assert (status, body) == (200, b"release file"), running.error_log()
            assert headers["content-type"] == FILE_TYPE
            assert headers["etag"] == f'"{h[:32]}"'
            assert headers["cache-control"] == "max-age=365000000, immutable, public"
            assert "x-devpid-blob" not in headers and "x-accel-redirect" not in headers
        asked = [s for s in backend.seen if s[":path"] == url]
        assert len(asked) == 1, asked  # one check, reused; never the full request
        assert asked[0]["x-devpid-check"] == "1"
        assert "x-devpid-accel" not in asked[0]

        status, headers, body = _get(nginx_port, url, {"Range": "bytes=8-"})
        assert (status, body) == (206, b"file")
        assert headers["content-range"] == "bytes 8-11/12"

        # A conditional request is devpid's to answer (its ETag, its 304): the full route.
        status, _, body = _get(nginx_port, url, {"If-None-Match": f'"{h[:32]}"'})
        assert (status, body) == (200, b"release file")
        assert backend.headers_for(url)["x-devpid-accel"] == "/+devpid-blobs/"

        # No blob named: devpid's own answer (here its JSON 404), and that "no" is not reused.
        missing = "/u/i/+f/abc/def/missing-1.0.tar.gz"
        for _ in range(2):
            status, headers, body = _get(nginx_port, missing)
            assert status == 404 and json.loads(body) == {"message": "no such file"}
        checks = [s for s in backend.seen if s[":path"] == missing and s.get("x-devpid-check")]
        assert len(checks) == 2
    finally:
        stop_nginx(running)
