"""``devpid export``: dump a (possibly running) server directory to a directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devpid.dump import DumpError, export

HELP = "dump a server directory (the server may keep running) to a dump directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--serverdir", help="server directory (default $DEVPID_SERVERDIR or ~/.devpid)"
    )
    parser.add_argument("target", help="dump directory to create (must not exist or be empty)")
    parser.add_argument("--force", action="store_true",
                        help="replace TARGET even if it is not empty")
    parser.add_argument("--hard-links", action="store_true",
                        help="hard-link blobs instead of copying (same file system only)")


def main(args: argparse.Namespace) -> int:
    from devpid.cli import _serverdir

    serverdir = _serverdir(args)
    target = Path(args.target).expanduser().absolute()
    try:
        result = export(serverdir, target, force=args.force, hard_links=args.hard_links)
    except (DumpError, OSError) as e:
        print(f"devpid: export failed: {e}", file=sys.stderr)
        return 1
    print(
        f"devpid: exported {result.entries} entries and {result.blobs} files at serial "
        f"{result.serial} to {result.target}"
    )
    return 0
