"""``devpid gen-config``: write the systemd unit, nginx site and backup crontab for a server.

The templates (``systemd/``, ``nginx/``, ``cron/`` at the repository top, shipped in wheels as
``devpid/_templates/``) use ``{{name}}`` placeholders rather than ``string.Template``'s ``$name``,
so nginx's ``$variables``, the shell's ``$(...)`` and systemd's ``%`` specifiers can be written
literally. Every value is validated before it is interpolated: these files are run as root or
parsed by nginx, and a stray newline, ``;`` or brace would silently change their meaning.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HELP = "write a systemd unit, an nginx site and a backup crontab for this server"

# Template file (relative to the template directory) -> name of the generated file.
TEMPLATES: dict[str, str] = {
    "systemd/devpid.service.in": "devpid.service",
    "nginx/devpid-nginx.conf.in": "devpid-nginx.conf",
    "cron/devpid-cron.in": "devpid-cron",
}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Characters that mean nothing special to systemd (no %, $, quotes, \, spaces), to the shell
# in the crontab and to nginx (no ;, { }, #, quotes): anything else is rejected, not quoted.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@,:=~-]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_SERVER_NAME = re.compile(r"[A-Za-z0-9*_]([A-Za-z0-9.*_-]*)")
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_SIZE = re.compile(r"[0-9]+[kKmMgG]?")
_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_URL_PATH = re.compile(r"(/[A-Za-z0-9._~+,=:@/-]*)?")
# systemd's ProtectHome= covers these; a server directory below them must stay reachable.
_HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))


def _default_bindir() -> Path:
    """The environment running gen-config, so the unit and cron job use the same devpid."""
    return Path(sys.executable).parent


@dataclass
class GenConfigOptions:
    """What the generated files depend on; defaults match a plain single-host install."""

    serverdir: Path
    port: int = 3141
    host: str = "127.0.0.1"
    outside_url: str | None = None
    nginx_port: int = 80
    server_name: str = "localhost"
    user: str = "devpid"
    group: str = "devpid"
    backup_dir: Path = Path("/var/backups/devpid")
    keep_days: int = 7
    max_upload_size: str = "1g"
    bindir: Path = field(default_factory=_default_bindir)
    nginx_address: str | None = None  # listen on all addresses unless given
    page_cache_seconds: int = 1
    # One process: measured on two cores, a second one lifts cached pages by ~35% but not
    # files or uploads, and doubles memory (bench/RESULTS-workers2.md). --workers N opts in.
    workers: int = 1
    cache_dir: Path = Path("/var/cache/nginx/devpid")
    # Who may create users and indexes (twistd's --restrict-modify): a public-facing
    # deployment has no open registration unless asked for ("" = anyone may register).
    restrict_modify: str = "root"

    def effective_outside_url(self) -> str:
        """The explicit outside URL, else the nginx site's own address."""
        if self.outside_url is not None:
            return self.outside_url
        first = self.server_name.split()[0] if self.server_name.split() else "localhost"
        if first == "_" or "*" in first:
            first = "localhost"
        port = "" if self.nginx_port == 80 else f":{self.nginx_port}"
        return f"http://{first}{port}"


def template_dir() -> Path:
    """Where the ``*.in`` templates are: inside an installed wheel first, else the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_templates", here.parent):
        if all((candidate / name).is_file() for name in TEMPLATES):
            return candidate
    raise FileNotFoundError(
        f"devpid's configuration templates are neither in {here / '_templates'} "
        f"nor in {here.parent}"
    )


def _check_path(name: str, value: Path) -> str:
    """An absolute path made only of characters no generated file treats specially."""
    text = str(value)
    if not value.is_absolute():
        raise ValueError(f"{name} must be an absolute path, got {text!r}")
    if not _SAFE_PATH.fullmatch(text):
        raise ValueError(
            f"{name} {text!r} contains characters that are unsafe in systemd, nginx or cron "
            "files (allowed: letters, digits and . _ / + @ , : = ~ -)"
        )
    return text


def _check_port(name: str, value: int) -> str:
    """A TCP port number nginx and twistd accept (bool is not a port)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name} must be a TCP port number 1-65535, got {value!r}")
    return str(value)


def _check_host(value: str) -> str:
    """An IP address or host name devpid listens on and nginx connects to."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"host must be an IP address or host name, got {value!r}") from None
    return value


def _check_outside_url(value: str) -> str:
    """An http(s) URL without characters systemd's ExecStart= would interpret."""
    match = _URL.match(value)
    if not match or not _URL_PATH.fullmatch(value[match.end() :]):
        raise ValueError(
            f"outside_url must be an http:// or https:// URL without spaces, quotes, query, "
            f"fragment, % or $, got {value!r}"
        )
    return value.rstrip("/")


def _check_server_name(value: str) -> str:
    """One or more nginx server names; no ``;``/braces/newlines that could escape the directive."""
    names = value.split(" ")
    if not value or not all(_SERVER_NAME.fullmatch(n) for n in names):
        raise ValueError(
            f"server_name must be host names separated by single spaces (letters, digits, "
            f". - _ *; no newline, ; or braces), got {value!r}"
        )
    return value


def _check_account(name: str, value: str) -> str:
    """A plain user or group name as systemd and cron expect."""
    if not _ACCOUNT.fullmatch(value):
        raise ValueError(f"{name} must be a plain user/group name, got {value!r}")
    return value


def _protect_home(serverdir: Path) -> str:
    """ProtectHome=read-only unless the server directory lies in a home directory."""
    for home in _HOME_DIRS:
        if serverdir == home or home in serverdir.parents:
            return (
                f"# ProtectHome= left off: the server directory is below {home}, "
                "which it would hide or make read-only."
            )
    return "ProtectHome=read-only"


def values(opts: GenConfigOptions) -> dict[str, str]:
    """The validated placeholder values; ``ValueError`` names the offending option."""
    serverdir = _check_path("serverdir", opts.serverdir)
    server_name = _check_server_name(opts.server_name)  # before the default URL uses it
    host = _check_host(opts.host)
    port = _check_port("port", opts.port)
    try:
        upstream_host = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        upstream_host = host
    keep_days = opts.keep_days
    if isinstance(keep_days, bool) or not isinstance(keep_days, int) or keep_days < 0:
        raise ValueError(f"keep_days must be a whole number of days >= 0, got {keep_days!r}")
    if not _SIZE.fullmatch(opts.max_upload_size):
        raise ValueError(
            f"max_upload_size must be an nginx size like 1g, 500m or 0 (unlimited), "
            f"got {opts.max_upload_size!r}"
        )
    return {
        "serverdir": serverdir,
        "bindir": _check_path("bindir", opts.bindir),
        "backup_dir": _check_path("backup_dir", opts.backup_dir),
        "host": host,
        "port": port,
        "upstream": f"{upstream_host}:{port}",
        "outside_url": _check_outside_url(opts.effective_outside_url()),
        "nginx_port": _check_port("nginx_port", opts.nginx_port),
        "server_name": server_name,
        "user": _check_account("user", opts.user),
        "group": _check_account("group", opts.group),
        "keep_days": str(keep_days),
        "max_upload_size": opts.max_upload_size,
        "protect_home": _protect_home(Path(serverdir)),
        "listen": _listen(opts),
        "cache_dir": _check_path("cache_dir", opts.cache_dir),
        "page_cache": _page_cache(opts.page_cache_seconds),
        "file_check_cache": _file_check_cache(opts.page_cache_seconds),
        "workers": _check_workers(opts.workers),
        "restrict_modify": _restrict_modify(opts.restrict_modify),
    }


_PRINCIPALS = re.compile(r"(:?[A-Za-z0-9][A-Za-z0-9._@-]*:?)(,:?[A-Za-z0-9][A-Za-z0-9._@-]*:?)*")


def _restrict_modify(value: str) -> str:
    """`` --restrict-modify a,b`` for ExecStart, or nothing for open registration."""
    if value == "":
        return ""
    if not _PRINCIPALS.fullmatch(value):
        raise ValueError(f"restrict_modify must be user names separated by commas, got {value!r}")
    return f" --restrict-modify {value}"


def _check_workers(workers: int) -> str:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ValueError(f"workers must be a whole number from 1 to 64, got {workers!r}")
    return str(workers)


def _listen(opts: GenConfigOptions) -> str:
    port = _check_port("nginx_port", opts.nginx_port)
    if opts.nginx_address is None:
        return port
    address = _check_host(opts.nginx_address)
    try:
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
    except ValueError:
        pass
    return f"{address}:{port}"


def _check_cache_seconds(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise ValueError(f"page_cache_seconds must be a whole number >= 0, got {seconds!r}")
    return seconds


def _file_check_cache(seconds: int) -> str:
    """nginx directives that let nginx reuse devpid's "send this blob" answers for files."""
    if _check_cache_seconds(seconds) == 0:
        return "# page cache off (--page-cache-seconds 0): every file request asks devpid"
    return "\n        ".join(
        [
            "proxy_cache devpid_pages;",
            'proxy_cache_key "file|$request_uri|$http_accept|$http_authorization'
            '|$http_x_devpi_auth";',
            f"proxy_cache_valid 200 {seconds}s;",
            "proxy_cache_lock on;",
        ]
    )


def _page_cache(seconds: int) -> str:
    """nginx directives for the simple-page micro-cache (``#`` comments when it is off)."""
    _check_cache_seconds(seconds)
    lines = [
        "proxy_cache devpid_pages;",
        f"proxy_cache_valid 200 301 302 {seconds}s;",
        "proxy_cache_lock on;",
        "proxy_cache_revalidate on;",
        "# devpid says max-age=0 and Vary to clients; the key above covers what varies.",
        "proxy_ignore_headers Cache-Control Expires Vary;",
        "add_header X-Devpid-Page-Cache $upstream_cache_status;",
    ]
    if seconds == 0:
        return "# page cache off (--page-cache-seconds 0): every page request reaches devpid"
    return "\n        ".join(lines)


def fill(template: str, mapping: dict[str, str]) -> str:
    """Replace ``{{name}}``; an unknown name is a bug in the template, so it raises."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in mapping:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return mapping[name]

    return _PLACEHOLDER.sub(one, template)


def render(opts: GenConfigOptions) -> dict[str, str]:
    """The generated files' texts by output file name (nothing is written)."""
    mapping = values(opts)
    base = template_dir()
    return {
        out: fill((base / name).read_text(encoding="utf-8"), mapping)
        for name, out in TEMPLATES.items()
    }


def _write_atomically(path: Path, text: str) -> None:
    """Readers (systemd, cron, nginx reloads) never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # cron ignores files in /etc/cron.d that group or others can write.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(opts: GenConfigOptions, output_dir: Path) -> list[Path]:
    """Render all files (validating everything first) and write them into ``output_dir``."""
    texts = render(opts)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = output_dir / name
        _write_atomically(path, text)
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``devpid gen-config`` (wired into the ``devpid`` command by devpid.cli)."""
    d = GenConfigOptions(serverdir=Path("/"))
    parser.add_argument("--serverdir", required=True, help="the server directory to serve")
    parser.add_argument("--port", type=int, default=d.port,
                        help=f"port devpid listens on (default {d.port})")
    parser.add_argument("--host", default=d.host,
                        help=f"address devpid listens on (default {d.host})")
    parser.add_argument("--outside-url",
                        help="URL clients use (default http://SERVER-NAME[:NGINX-PORT])")
    parser.add_argument("--nginx-port", type=int, default=d.nginx_port,
                        help=f"port nginx listens on (default {d.nginx_port})")
    parser.add_argument("--server-name", default=d.server_name,
                        help=f"nginx server_name (default {d.server_name})")
    parser.add_argument("--user", default=d.user,
                        help=f"system user running devpid and the backups (default {d.user})")
    parser.add_argument("--group", default=None, help="system group (default: same as --user)")
    parser.add_argument("--backup-dir", default=str(d.backup_dir),
                        help=f"where daily dumps go (default {d.backup_dir})")
    parser.add_argument("--keep-days", type=int, default=d.keep_days,
                        help=f"delete dumps older than this many days (default {d.keep_days})")
    parser.add_argument("--max-upload-size", default=d.max_upload_size,
                        help=f"nginx client_max_body_size (default {d.max_upload_size})")
    parser.add_argument("--nginx-address", default=None,
                        help="address nginx listens on (default: all addresses)")
    parser.add_argument("--page-cache-seconds", type=int, default=d.page_cache_seconds,
                        help="seconds nginx reuses a simple page before asking devpid again "
                        f"(default {d.page_cache_seconds}; 0 = off)")
    parser.add_argument("--cache-dir", default=str(d.cache_dir),
                        help=f"nginx cache directory for pages (default {d.cache_dir})")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help=f"devpid processes sharing the port (default {d.workers}; more "
                        "help only page-heavy loads, see README)")
    parser.add_argument("--restrict-modify", default=d.restrict_modify,
                        help="users who may create users and indexes (default "
                        f"{d.restrict_modify}; '' = anyone may register)")
    parser.add_argument("--output", default="gen-config",
                        help="directory to write the files to (default ./gen-config)")


def _install_hint(path: Path, opts: GenConfigOptions) -> str:
    """One shell line that installs ``path`` where it belongs."""
    if path.name.endswith(".service"):
        return (f"cp {path} /etc/systemd/system/{path.name} && systemctl daemon-reload "
                f"&& systemctl enable --now {path.stem}")
    if path.name.endswith("nginx.conf"):
        return (f"cp {path} /etc/nginx/conf.d/devpid.conf (or include it inside http {{}}) "
                "&& nginx -t && systemctl reload nginx")
    return (f"install -m 0644 -o root -g root {path} /etc/cron.d/devpid && "
            f"install -d -o {opts.user} -g {opts.group} -m 0750 {opts.backup_dir}")


def main(args: argparse.Namespace) -> int:
    """Run ``devpid gen-config``: write the files and say how to install them."""
    opts = GenConfigOptions(
        serverdir=Path(os.path.abspath(Path(args.serverdir).expanduser())),
        port=args.port,
        host=args.host,
        outside_url=args.outside_url,
        nginx_port=args.nginx_port,
        server_name=args.server_name,
        user=args.user,
        group=args.group or args.user,
        backup_dir=Path(os.path.abspath(Path(args.backup_dir).expanduser())),
        keep_days=args.keep_days,
        max_upload_size=args.max_upload_size,
        nginx_address=args.nginx_address,
        page_cache_seconds=args.page_cache_seconds,
        workers=args.workers,
        cache_dir=Path(os.path.abspath(Path(args.cache_dir).expanduser())),
        restrict_modify=args.restrict_modify,
    )
    try:
        paths = write(opts, Path(args.output))
    except ValueError as e:
        print(f"devpid gen-config: {e}", file=sys.stderr)
        return 2
    print(f"devpid: the server runs as user {opts.user}; create it first if needed: "
          f"useradd --system --home-dir {opts.serverdir} {opts.user}")
    for path in paths:
        print(f"wrote {path}")
        print(f"  install: {_install_hint(path.absolute(), opts)}")
    return 0
