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
    "systemd/devpid@.service.in": "devpid@.service",
    "nginx/devpid-nginx.conf.in": "devpid-nginx.conf",
    "cron/devpid-cron.in": "devpid-cron",
}
# One node: devpid.service; several (--node): the template unit, one instance per port.
SINGLE_UNIT, NODE_UNIT = "devpid.service", "devpid@.service"
# How nginx keeps a client on one node (--sticky): see _upstream.
STICKY = ("addr", "auth", "none")

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
    # Who may see /+status and /+metrics (twistd's --status-acl); None: devpid's default.
    status_acl: str | None = None
    # Where the stored files are (twistd's --blobdir); None: SERVERDIR/+blobs.
    blob_dir: Path | None = None
    # Several nodes on one PostgreSQL database (http://HOST:PORT each), balanced by nginx;
    # empty: the one node at host:port. Node PORT's server directory is SERVERDIR/PORT.
    nodes: list[str] = field(default_factory=list)
    sticky: str = "addr"

    def effective_blob_dir(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.serverdir / "+blobs"

    def effective_outside_url(self) -> str:
        """The explicit outside URL, else the nginx site's own address."""
        if self.outside_url is not None:
            return self.outside_url
        first = self.server_name.split()[0] if self.server_name.split() else "localhost"
        if first == "_" or "*" in first:
            first = "localhost"
        port = "" if self.nginx_port == 80 else f":{self.nginx_port}"
        return f"http://{first}{port}"


def _node_addresses(opts: GenConfigOptions) -> list[tuple[str, int]]:
    """(host, port) of every node: the --node URLs, else the one at --host/--port."""
    if not opts.nodes:
        return [(opts.host, opts.port)]
    found: list[tuple[str, int]] = []
    for url in opts.nodes:
        match = re.fullmatch(r"(?:http://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?", url)
        if not match:
            raise ValueError(f"node must be http://HOST:PORT, got {url!r}")
        host = match.group(1).strip("[]")
        found.append((_check_host(host), int(_check_port("node port", int(match.group(2))))))
    if len(set(found)) != len(found):
        raise ValueError("the same node is named twice")
    ports = [port for _, port in found]
    if len(set(ports)) != len(ports):
        # SERVERDIR/PORT and devpid@PORT name a node: ports must differ, even across hosts
        raise ValueError("every node needs a port of its own (it names the node's unit "
                         "devpid@PORT and its server directory SERVERDIR/PORT)")
    return found


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _upstream(opts: GenConfigOptions) -> str:
    """The ``server`` lines of the upstream block, and with several nodes how one is chosen.

    A node serves another node's write once its view reached that serial (milliseconds):
    a client that uploads and at once installs should stay on one node. ``addr`` hashes the
    client address (an upload and the install that follows come from the same machine, even
    when pip asks anonymously after twine logged in); ``auth`` hashes the credentials (one
    user or token per node, whatever the address: clients behind one NAT still spread), and
    anonymous requests by address; ``none`` spreads every request (read-your-writes is then
    only as good as the node's lag). ``consistent``: a node that leaves moves only its own
    clients. A node that fails is skipped (``max_fails``) for ``fail_timeout``.
    """
    nodes = _node_addresses(opts)
    if opts.sticky not in STICKY:
        raise ValueError(f"sticky must be one of {', '.join(STICKY)}, got {opts.sticky!r}")
    if len(nodes) == 1:
        return f"server {_bracketed(nodes[0][0])}:{nodes[0][1]};"
    lines = []
    if opts.sticky == "addr":
        lines.append("hash $remote_addr consistent;")
    elif opts.sticky == "auth":
        lines.append("hash $devpid_affinity consistent;")
    else:
        lines.append("least_conn;")
    lines += [f"server {_bracketed(host)}:{port} max_fails=1 fail_timeout=10s;"
              for host, port in nodes]
    return "\n    ".join(lines)


def _node_host(opts: GenConfigOptions) -> str:
    """The address every node of the template unit listens on (--host)."""
    hosts = {host for host, _ in _node_addresses(opts)}
    if len(hosts) == 1:
        return next(iter(hosts))
    if opts.host in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("nodes on several hosts: give --host, the address each node "
                         "listens on (e.g. 0.0.0.0, with --trusted-proxy for nginx's address)")
    return opts.host


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
    blob_dir = _check_path("blob_dir", opts.effective_blob_dir())
    write_paths = [serverdir]
    if not Path(blob_dir).is_relative_to(serverdir):
        write_paths.append(blob_dir)
    nodes = _node_addresses(opts)
    return {
        "serverdir": serverdir,
        "blob_dir": blob_dir,
        "blobdir_option": "" if opts.blob_dir is None else f" --blobdir {blob_dir}",
        "read_write_paths": " ".join(write_paths),
        "node_host": _node_host(opts) if opts.nodes else host,
        "node_ports": " ".join(str(port) for _, port in nodes),
        "backup_serverdir": serverdir if not opts.nodes else f"{serverdir}/{nodes[0][1]}",
        "upstream_servers": _upstream(opts),
        "status_acl": _status_acl(opts.status_acl),
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


def _status_acl(value: str | None) -> str:
    """`` --status-acl a,b`` for ExecStart, or nothing for devpid's default."""
    if value is None:
        return ""
    if not _PRINCIPALS.fullmatch(value):
        raise ValueError(f"status_acl must be user names or :AUTHENTICATED: separated by "
                         f"commas, got {value!r}")
    return f" --status-acl {value}"


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
    unused = SINGLE_UNIT if opts.nodes else NODE_UNIT
    return {
        out: fill((base / name).read_text(encoding="utf-8"), mapping)
        for name, out in TEMPLATES.items() if out != unused
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
    parser.add_argument("--status-acl", default=None,
                        help="users (or :AUTHENTICATED:) who may see /+status and /+metrics "
                        "(default: devpid's, everyone)")
    parser.add_argument("--blobdir", default=None,
                        help="directory of the stored files, e.g. on a filesystem every node "
                        "shares (default SERVERDIR/+blobs, or SERVERDIR's remembered one)")
    parser.add_argument("--node", action="append", default=[], metavar="URL",
                        help="http://HOST:PORT of a devpid node on the shared PostgreSQL "
                        "database; repeat for each: nginx balances over them and the "
                        "systemd template unit devpid@PORT runs one (default: one node at "
                        "--host/--port)")
    parser.add_argument("--sticky", choices=STICKY, default=d.sticky,
                        help="with several nodes, keep a client on one node by its address "
                        "(addr, default), its credentials (auth), or not at all (none)")
    parser.add_argument("--output", default="gen-config",
                        help="directory to write the files to (default ./gen-config)")


def _install_hint(path: Path, opts: GenConfigOptions) -> str:
    """One shell line that installs ``path`` where it belongs."""
    if path.name == NODE_UNIT:
        ports = [port for _, port in _node_addresses(opts)]
        first = opts.serverdir / str(ports[0])
        units = " ".join(f"devpid@{port}" for port in ports)
        return (f"cp {path} /etc/systemd/system/ && systemctl daemon-reload; on each node's "
                f"host, once: devpid init --serverdir {opts.serverdir}/PORT --store URL "
                f"--blobdir {opts.effective_blob_dir()} (the first creates the database, "
                f"the others join it; copy {opts.serverdir}/.secret to every host, so a "
                f"token works on each node), then systemctl enable --now {units} "
                f"(those of this host; first node: {first})")
    if path.name.endswith(".service"):
        return (f"cp {path} /etc/systemd/system/{path.name} && systemctl daemon-reload "
                f"&& systemctl enable --now {path.stem}")
    if path.name.endswith("nginx.conf"):
        return (f"cp {path} /etc/nginx/conf.d/devpid.conf (or include it inside http {{}}) "
                "&& nginx -t && systemctl reload nginx")
    return (f"install -m 0644 -o root -g root {path} /etc/cron.d/devpid && "
            f"install -d -o {opts.user} -g {opts.group} -m 0750 {opts.backup_dir}")


def _blob_dir(args: argparse.Namespace) -> Path | None:
    """--blobdir, else the directory the (single) server directory remembered, if any."""
    if args.blobdir:
        return Path(os.path.abspath(Path(args.blobdir).expanduser()))
    from devpid.store import BLOBDIR_FILE, blob_root

    serverdir = Path(os.path.abspath(Path(args.serverdir).expanduser()))
    if not args.node and (serverdir / BLOBDIR_FILE).is_file():
        return blob_root(serverdir)
    return None


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
        status_acl=args.status_acl,
        blob_dir=_blob_dir(args),
        nodes=list(args.node),
        sticky=args.sticky,
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
