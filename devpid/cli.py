"""The ``devpid`` command: offline administration of a server directory.

``devpid init`` creates one, ``devpid passwd`` sets a password, ``devpid export`` and
``devpid import`` move data, ``devpid gc`` deletes files nothing needs any more,
``devpid gen-config`` writes systemd/nginx/cron files. The server
itself runs under twistd: ``twistd -n devpid --serverdir DIR``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from devpid import auth
from devpid.tap import default_serverdir


def _serverdir(args: argparse.Namespace) -> Path:
    return Path(args.serverdir or default_serverdir()).expanduser().resolve()


def cmd_init(args: argparse.Namespace) -> int:
    from devpid.init import AlreadyInitialised, initialise

    serverdir = _serverdir(args)
    if args.store:
        from devpid.store import DB_NAME, is_initialised, is_postgres_url, remember_store_url

        if not is_postgres_url(args.store):
            print("devpid: --store must be a postgresql:// URL", file=sys.stderr)
            return 2
        new_node = not (serverdir / DB_NAME).exists()
        remember_store_url(serverdir, args.store)
        if new_node and is_initialised(serverdir):
            return _join(serverdir, args)
    if args.blobdir and not _record_blobdir(serverdir, Path(args.blobdir)):
        return 2
    if args.root_password == "":
        print("devpid: WARNING: root gets an EMPTY password, as requested.", file=sys.stderr)
    try:
        password = initialise(
            serverdir,
            root_password=args.root_password,
            root_pypi=not args.no_root_pypi,
            mirror_url=args.mirror_url,
            bcrypt_rounds=args.bcrypt_rounds,
        )
    except AlreadyInitialised as e:
        print(f"devpid: {e}; nothing changed.", file=sys.stderr)
        return 1
    print(f"devpid: initialised {serverdir}")
    if args.root_password is None:
        print(f"devpid: root password (shown once, keep it): {password}")
        print(f"devpid: to set a new one: devpid passwd root --serverdir {serverdir}")
    print(f"devpid: start it with: twistd -n --pidfile= devpid --serverdir {serverdir}")
    return 0


def _record_blobdir(serverdir: Path, blobdir: Path) -> bool:
    """Remember ``--blobdir`` for ``serverdir``; False (with the reason printed) if refused."""
    from devpid.store import BlobDirError, remember_blobdir

    try:
        remember_blobdir(serverdir, blobdir)
    except (BlobDirError, OSError) as e:
        print(f"devpid: --blobdir: {e}", file=sys.stderr)
        return False
    return True


def _join(serverdir: Path, args: argparse.Namespace) -> int:
    """A new server directory on a database another node initialised: it becomes one more
    node of it (users, indexes and root's password are the database's)."""
    if args.blobdir and not _record_blobdir(serverdir, Path(args.blobdir)):
        return 2
    if args.root_password is not None:
        print("devpid: the database has a root password already; --root-password ignored",
              file=sys.stderr)
    print(f"devpid: {serverdir} joins the database as one more node (nothing else changed)")
    print(f"devpid: start it with: twistd -n --pidfile= devpid --serverdir {serverdir}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from devpid.store import is_initialised, keys, open_store

    serverdir = _serverdir(args)
    if not is_initialised(serverdir):
        print(f"devpid: {serverdir} is not an initialised server directory", file=sys.stderr)
        return 1
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass(f"new password for {args.user}: ")
            if getpass.getpass("repeat it: ") != password:
                print("devpid: the passwords differ; nothing changed.", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\n")
    store, _ = open_store(serverdir)
    try:
        record = store.get(keys.user(args.user))
        if not isinstance(record, dict):
            print(f"devpid: no user {args.user!r}", file=sys.stderr)
            return 1
        record = dict(record, pwhash=auth.hash_password(password, args.bcrypt_rounds))
        with store.transaction() as tx:
            tx.set(keys.user(args.user), record)
    finally:
        store.close()
    print(f"devpid: password of {args.user} changed (serial {tx.serial})")
    return 0


def _add_serverdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--serverdir", help="server directory (default $DEVPID_SERVERDIR or ~/.devpid)"
    )


class _Parser(argparse.ArgumentParser):
    """A mistyped option: the error and a hint, not the usage block."""

    def error(self, message: str) -> NoReturn:
        from devpid.firstscreen import usage_hint

        self.exit(2, usage_hint(self.prog, Exception(message)) + "\n")


def build_parser() -> argparse.ArgumentParser:
    from devpid.firstscreen import version_text

    parser = _Parser(
        prog="devpid",
        description="Administer a devpid server directory. "
        "Run the server with: twistd -n devpid --serverdir DIR",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a server directory with root and root/pypi")
    _add_serverdir(p)
    p.add_argument("--root-password", help="root's password (default: generate and print one)")
    p.add_argument("--no-root-pypi", action="store_true", help="do not create root/pypi")
    p.add_argument("--store", help="a postgresql:// URL: keep the state in that database "
                   "(other nodes then start with twistd devpid --store URL, no init)")
    p.add_argument("--blobdir", help="directory for the stored files, e.g. on a filesystem "
                   "several nodes share (default SERVERDIR/+blobs; remembered)")
    p.add_argument("--mirror-url", help="upstream simple index for root/pypi (default: PyPI)")
    p.add_argument("--bcrypt-rounds", type=auth.bcrypt_rounds,
                   default=auth.DEFAULT_BCRYPT_ROUNDS,
                   help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("passwd", help="set a user's password (server may be running)")
    _add_serverdir(p)
    p.add_argument("user")
    p.add_argument("--password", help="the new password (default: prompt, or read stdin)")
    p.add_argument("--bcrypt-rounds", type=auth.bcrypt_rounds,
                   default=auth.DEFAULT_BCRYPT_ROUNDS,
                   help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_passwd)

    for name, module in _OPTIONAL_COMMANDS:
        try:
            mod = __import__(module, fromlist=["add_arguments", "main", "HELP"])
        except ImportError:
            continue
        p = sub.add_parser(name, help=getattr(mod, "HELP", None))
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


# Subcommands implemented in their own modules: (name, module with add_arguments/main).
_OPTIONAL_COMMANDS: list[tuple[str, str]] = [
    ("export", "devpid.dump_cli_export"),
    ("import", "devpid.dump_cli_import"),
    ("gen-config", "devpid.genconfig"),
    ("gc", "devpid.blobgc_cli"),
    ("mirror", "devpid.prefetch_cli"),
    ("cache", "devpid.cache_cli"),
    ("events", "devpid.events_cli"),
    ("token", "devpid.token_cli"),
    ("audit", "devpid.audit_cli"),
]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from devpid.store.base import StoreError

    try:
        return func(args)
    except StoreError as e:  # e.g. the server directory's database is unreachable
        print(f"devpid: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
