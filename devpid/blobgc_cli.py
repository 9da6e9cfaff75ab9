"""``devpid gc``: delete the stored files no record needs any more (server may be running)."""

from __future__ import annotations

import argparse
import sqlite3
import sys

HELP = "delete stored files that no release, doc or mirror page needs (server may keep running)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from devpid.blobgc import DEFAULT_GRACE_SECONDS

    parser.add_argument(
        "--serverdir", help="server directory (default $DEVPID_SERVERDIR or ~/.devpid)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only report what would be deleted"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        help="keep unreferenced files younger than this: an upload or mirror download in "
        "progress writes its file before its record (default %(default).0f; 0 only while "
        "the server is stopped)",
    )


def main(args: argparse.Namespace) -> int:
    from devpid.blobgc import read_live_for, sweep
    from devpid.cli import _serverdir
    from devpid.dump import Progress
    from devpid.store import LocalBlobStore, blob_root, is_initialised
    from devpid.store.base import StoreError

    serverdir = _serverdir(args)
    if not is_initialised(serverdir):
        print(f"devpid: {serverdir} is not an initialised server directory", file=sys.stderr)
        return 1
    if args.grace_seconds < 0:
        print("devpid: --grace-seconds must not be negative", file=sys.stderr)
        return 2
    bar: list[Progress] = []

    def progress(n: int, total: int) -> None:
        if not bar:
            bar.append(Progress("checking", total, "files"))
        bar[0].advance()

    try:
        report = sweep(
            LocalBlobStore(blob_root(serverdir)),
            read_live_for(serverdir),
            grace_seconds=args.grace_seconds,
            dry_run=args.dry_run,
            progress=progress,
        )
    except (OSError, sqlite3.Error, StoreError) as e:
        print(f"devpid: gc failed, nothing was deleted: {e}", file=sys.stderr)
        return 1
    finally:
        if bar:
            bar[0].finish()
    for error in report.errors:
        print(f"devpid: could not delete {error}", file=sys.stderr)
    print(f"devpid: gc: {report.summary()}")
    return 1 if report.errors else 0
