"""``twistd devpid``: command-line options and the service tree, nothing else.

makeService hands the settings to devpid.node.build_node, which builds the process's whole
service graph (and its shutdown order); the root here only installs the log observer::

    DevpidService (MultiService)
      Node.root     see devpid/node.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.application import service
from twisted.logger import (
    ILogObserver,
    Logger,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import usage

from devpid import auth, firstscreen
from devpid.proxies import DEFAULT_TRUSTED, parse_networks
from devpid.store import (
    BlobDirError,
    is_initialised,
    is_postgres_url,
    remember_blobdir,
    remember_store_url,
)
from devpid.store.base import StoreError

T = TypeVar("T")

log = Logger()


def default_serverdir() -> str:
    return os.environ.get("DEVPID_SERVERDIR") or str(Path.home() / ".devpid")


def parse_size(text: str) -> int:
    """``100M``, ``1G``, ``512k`` or plain bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise usage.UsageError(f"not a size: {text!r} (use e.g. 500M or 1G)") from None


def _comma_list(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


class Options(usage.Options):
    """Options of ``twistd devpid``."""

    synopsis = "[twistd options] devpid [--serverdir DIR] [--host H] [--port P] ..."
    longdesc = (
        "Run the devpid package index server. Initialise a server directory first with "
        "'devpid init --serverdir DIR' (or pass --init)."
    )
    optParameters = [
        ["serverdir", None, None, "server directory (default $DEVPID_SERVERDIR or ~/.devpid)"],
        ["store", None, None,
         "database URL (postgresql://USER@HOST:PORT/DB) shared by several nodes; recorded in "
         "the server directory (default: its own SQLite file)"],
        ["blobdir", None, None,
         "directory for the stored files, e.g. on a filesystem several nodes share; "
         "recorded in the server directory (default SERVERDIR/+blobs)"],
        ["host", None, "localhost", "interface to listen on"],
        ["port", None, 3141, "TCP port to listen on (0 = any free port)", int],
        ["listen", None, None, "a Twisted endpoint string, overrides --host/--port"],
        ["outside-url", None, None, "URL under which clients reach this server"],
        ["trusted-proxy", None, ",".join(DEFAULT_TRUSTED),
         "comma-separated addresses/networks whose Host, X-Outside-Url and X-Real-IP are "
         "believed ('' = none)"],
        ["request-timeout", None, 5.0, "seconds to wait for an upstream or primary", float],
        ["mirror-min-rate", None, 1024.0,
         "bytes/s a mirror file download must average over each --request-timeout window; "
         "slower ones are aborted (0 = only a full stall aborts)", float],
        ["secretfile", None, None, "file holding the token secret (default SERVERDIR/.secret)"],
        ["log-format", None, "text", "log format on stdout: text or json"],
        ["primary-url", None, None, "run as a replica of the primary at this URL"],
        ["mirror-cache-expiry", None, 1800, "default seconds before mirror pages refresh", int],
        ["max-upload-size", None, "1G", "largest accepted upload (e.g. 500M, 2G)"],
        ["mirror-max-page-size", None, "64M",
         "largest upstream project page a mirror accepts (bounds memory per page)"],
        ["bcrypt-rounds", None, auth.DEFAULT_BCRYPT_ROUNDS, "bcrypt cost for new passwords", int],
        ["root-password", None, None, "root password when --init creates the serverdir"],
        ["portfile", None, None, "write the listening port number to this file"],
        ["workers", None, 1, "processes serving requests (reads in all, writes in one)", int],
        ["mirror-max-bytes", None, "0",
         "bound on all mirror caches together, least recently downloaded files evicted "
         "first (e.g. 50G; 0 = none; per mirror: the mirror_max_bytes index option)"],
        ["gc-interval", None, 86400.0,
         "seconds between sweeps that delete unreferenced files (0 = never)", float],
        ["gc-grace", None, 3600.0,
         "seconds an unreferenced file is kept before a sweep may delete it", float],
        ["event-retry-horizon", None, 6 * 3600.0,
         "seconds a failing event hook retries one serial before giving it up", float],
        ["mirror-file-hosts", None, "",
         "comma-separated extra hosts mirror file URLs may point at (* = any public host)"],
        ["mirror-admins", None, "root",
         "comma-separated users who may create mirror indexes and set mirror_url"],
        ["body-timeout", None, 60.0,
         "seconds a request body may take (plus one per 64 KiB); slower gets 408", float],
        ["max-login-failures", None, 10,
         "wrong passwords per user and minute before password checks get 429 (0 = no limit)",
         int],
        ["restrict-modify", None, None,
         "comma-separated users who may create users and indexes (default: anyone may "
         "register and create own indexes); root always may"],
        ["status-acl", None, ":ANONYMOUS:",
         "comma-separated users, or :AUTHENTICATED:, who may see /+status and /+metrics "
         "(default :ANONYMOUS:, everyone); root always may"],
        ["header-timeout", None, 10.0,
         "seconds a client may take to send a request's head (else 408 and close)", float],
        ["idle-timeout", None, 60.0,
         "seconds a keep-alive connection may wait for its next request", float],
        ["max-connections", None, 4096,
         "open client connections per process; beyond, idle ones are dropped, else 503", int],
    ]
    optFlags = [
        ["init", None, "initialise the server directory if it is new"],
        ["offline-mode", None, "never contact upstream indexes; serve only cached files"],
        ["no-root-pypi", None, "with --init: do not create the root/pypi mirror"],
        ["public-emails", None,
         "show users' emails in listings to everyone, as devpi-server does (default: only "
         "to the user and root)"],
        ["allow-private-addresses", None,
         "let mirrors and webhooks connect to loopback, link-local and private addresses"],
    ]

    def opt_version(self) -> None:
        """Print devpid's version and exit."""
        print(firstscreen.version_text())
        sys.exit(0)

    def postOptions(self) -> None:
        self["serverdir"] = Path(self["serverdir"] or default_serverdir()).expanduser().resolve()
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")
        if self["port"] < 0 or self["port"] > 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if self["body-timeout"] <= 0:
            raise usage.UsageError("--body-timeout must be positive")
        try:
            auth.bcrypt_rounds(self["bcrypt-rounds"])
        except ValueError as e:
            raise usage.UsageError(f"--bcrypt-rounds: {e}") from None
        if self["request-timeout"] <= 0:
            raise usage.UsageError("--request-timeout must be positive")
        if self["mirror-min-rate"] < 0:
            raise usage.UsageError("--mirror-min-rate must not be negative")
        self["max-upload-size"] = parse_size(str(self["max-upload-size"]))
        self["mirror-max-bytes"] = parse_size(str(self["mirror-max-bytes"]))
        self["mirror-max-page-size"] = parse_size(str(self["mirror-max-page-size"]))
        for key in ("outside-url", "primary-url"):
            if self[key] and not self[key].startswith(("http://", "https://")):
                raise usage.UsageError(f"--{key} must start with http:// or https://")
        if self["primary-url"] and self["init"]:
            raise usage.UsageError("a replica needs no --init: it copies the primary")
        for key in ("gc-interval", "gc-grace", "event-retry-horizon"):
            if self[key] < 0:
                raise usage.UsageError(f"--{key} must not be negative")
        for key in ("mirror-file-hosts", "mirror-admins"):
            self[key] = _comma_list(self[key])
        if self["restrict-modify"] is not None:
            self["restrict-modify"] = _comma_list(self["restrict-modify"])
        self["trusted-proxy"] = _comma_list(self["trusted-proxy"])
        self["status-acl"] = _comma_list(self["status-acl"])
        if not self["status-acl"]:
            raise usage.UsageError("--status-acl needs at least one user or :AUTHENTICATED:")
        try:
            parse_networks(self["trusted-proxy"])
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {e}") from None
        for key in ("header-timeout", "idle-timeout"):
            if self[key] <= 0:
                raise usage.UsageError(f"--{key} must be positive")
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1 and (self["primary-url"] or self["listen"]):
            raise usage.UsageError("--workers works with --host/--port on a primary only")
        if self["store"] is not None and not is_postgres_url(self["store"]):
            raise usage.UsageError("--store must be a postgresql:// URL")


class TwistdOptions(Options):
    """The options as ``twistd devpid`` parses them (see twisted/plugins/devpid_plugin.py)."""

    def parseOptions(self, options: Any = None) -> None:
        """A mistyped option: the error and a hint, not twistd's whole option table (which
        twistd prints before the error when a UsageError reaches it)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            print(firstscreen.usage_hint("twistd devpid", e), file=sys.stderr)
            raise SystemExit(2) from None


class DevpidService(service.MultiService):
    """The root service; installs devpid's log observer on the twistd application."""

    def __init__(self, log_format: str) -> None:
        super().__init__()
        self.log_format = log_format
        self.node: Any = None  # the devpid.node.Node it runs (for debugging and tests)

    def setServiceParent(self, parent: Any) -> None:
        setComponent = getattr(parent, "setComponent", None)
        if setComponent is not None:
            observer = (
                jsonFileLogObserver(sys.stdout)
                if self.log_format == "json"
                else textFileLogObserver(sys.stdout)
            )
            setComponent(ILogObserver, firstscreen.quiet(observer))
        super().setServiceParent(parent)


def _store_call(func: Callable[[Path], T], serverdir: Path) -> T:
    """A store that cannot be opened (e.g. its database is unreachable): one clear line."""
    try:
        return func(serverdir)
    except StoreError as e:
        raise SystemExit(f"devpid: {serverdir}: {e}") from None


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the service tree from parsed options (no I/O beyond opening the store; with
    --workers, binding the sockets the workers share)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from devpid import init as initmod
    from devpid.node import build_node
    from devpid.web import Settings

    serverdir: Path = options["serverdir"]
    replica = bool(options["primary-url"])
    if options["store"]:
        remember_store_url(serverdir, options["store"])
    if options["blobdir"]:
        try:
            remember_blobdir(serverdir, Path(options["blobdir"]))
        except (BlobDirError, OSError) as e:
            raise SystemExit(f"devpid: --blobdir: {e}") from None
    if not replica and not _store_call(is_initialised, serverdir):
        if not options["init"]:
            raise SystemExit(
                f"devpid: {serverdir} is not an initialised server directory.\n"
                f"Run 'devpid init --serverdir {serverdir}' first, or start with --init."
            )
        password = initmod.initialise(
            serverdir,
            root_password=options["root-password"],
            root_pypi=not options["no-root-pypi"],
            bcrypt_rounds=options["bcrypt-rounds"],
        )
        if options["root-password"] is None:
            print(firstscreen.generated_password_text(password, serverdir), flush=True)

    secretfile = Path(options["secretfile"]) if options["secretfile"] else serverdir / ".secret"
    try:
        secret = auth.load_or_create_secret(secretfile)
    except (OSError, ValueError) as e:
        raise SystemExit(f"devpid: {e}") from None

    settings = Settings(
        serverdir=serverdir,
        host=options["host"],
        port=options["port"],
        outside_url=options["outside-url"],
        request_timeout=options["request-timeout"],
        mirror_min_rate=options["mirror-min-rate"],
        offline_mode=bool(options["offline-mode"]),
        mirror_cache_expiry=options["mirror-cache-expiry"],
        max_upload_size=options["max-upload-size"],
        mirror_max_page_size=options["mirror-max-page-size"],
        primary_url=options["primary-url"],
        role="replica" if replica else "standalone",
        bcrypt_rounds=options["bcrypt-rounds"],
        log_format=options["log-format"],
        workers=options["workers"],
        gc_interval=options["gc-interval"],
        mirror_max_bytes=options["mirror-max-bytes"],
        gc_grace=options["gc-grace"],
        event_retry_horizon=options["event-retry-horizon"],
        allow_private_addresses=bool(options["allow-private-addresses"]),
        public_emails=bool(options["public-emails"]),
        mirror_file_hosts=options["mirror-file-hosts"],
        mirror_admins=options["mirror-admins"],
        restrict_modify=options["restrict-modify"],
        status_acl=options["status-acl"],
        max_login_failures=options["max-login-failures"],
        body_timeout=options["body-timeout"],
        trusted_proxies=options["trusted-proxy"],
        header_timeout=options["header-timeout"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
    )
    node = build_node(
        settings, "main", secret=secret, reactor=reactor, secretfile=secretfile,
        listen=options["listen"],
        portfile=Path(options["portfile"]) if options["portfile"] else None,
    )
    top = DevpidService(options["log-format"])
    node.root.setServiceParent(top)
    top.node = node
    return top


__all__ = ["Options", "TwistdOptions", "makeService"]
