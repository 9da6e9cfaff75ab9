"""``devpid import``: create a new server directory from a devpid dump or a devpi export."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devpid import auth
from devpid.dump import (
    DumpError,
    check_target,
    load_any,
    set_root_password,
    unusable_password_users,
    verify_plan,
    write_plan,
)
from devpid.redact import redact_url

HELP = "create a new server directory from a devpid dump or a devpi-server export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--serverdir", help="NEW server directory (default $DEVPID_SERVERDIR or ~/.devpid)"
    )
    parser.add_argument("dump", help="a 'devpid export' or 'devpi-export' directory")
    parser.add_argument("--store", metavar="URL",
                        help="put the new server's data in this EMPTY PostgreSQL database "
                             "(postgresql://...) instead of SQLite")
    parser.add_argument("--hard-links", action="store_true",
                        help="hard-link files from the dump instead of copying them")
    parser.add_argument("--root-password",
                        help="set root's password (default: keep the one in the dump)")
    parser.add_argument("--bcrypt-rounds", type=auth.bcrypt_rounds,
                        default=auth.DEFAULT_BCRYPT_ROUNDS, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    from devpid.cli import _serverdir

    serverdir = _serverdir(args)
    dumpdir = Path(args.dump).expanduser().absolute()
    try:
        check_target(serverdir, args.store)
        plan = load_any(dumpdir)
        verify_plan(plan)
        if args.root_password is not None:
            set_root_password(plan, args.root_password, args.bcrypt_rounds)
        for warning in plan.warnings:
            print(f"devpid: WARNING: {warning}", file=sys.stderr)
        serial = write_plan(plan, serverdir, hard_links=args.hard_links, database=args.store)
    except (DumpError, OSError) as e:
        print(f"devpid: import failed, nothing written: {e}", file=sys.stderr)
        return 1
    locked = unusable_password_users(plan)
    if locked:
        print(
            "devpid: WARNING: these users have no usable password (their hashes came from "
            f"devpi-server and cannot be checked by devpid): {', '.join(locked)}\n"
            f"devpid: set one for each with: devpid passwd --serverdir {serverdir} USER",
            file=sys.stderr,
        )
    where = f"{serverdir} on {redact_url(args.store)}" if args.store else str(serverdir)
    print(f"devpid: imported {plan.source} into {where} (serial {serial})")
    return 0
