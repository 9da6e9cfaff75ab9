"""``devpid audit``: who wrote what, from where, at which serial (devpid/audit.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "show the audit log of write requests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serverdir", help="server directory (default $DEVPID_SERVERDIR or "
                   "~/.devpid)")
    p.add_argument("--user", help="only this user's requests")
    p.add_argument("--since-serial", type=int, help="only writes that committed this serial "
                   "or later")
    p.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def main(args: argparse.Namespace) -> int:
    from devpid.audit import query
    from devpid.tap import default_serverdir

    serverdir = Path(args.serverdir or default_serverdir()).expanduser().resolve()
    for entry in query(serverdir, user=args.user, since_serial=args.since_serial,
                       limit=max(1, args.limit)):
        if args.json:
            print(json.dumps(entry, sort_keys=True))
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["time"]))
        serial = "-" if entry["serial"] is None else entry["serial"]
        print(f"{when} {entry['who'] or '-'} {entry['address'] or '-'} {entry['method']} "
              f"{entry['path']} {entry['code']} serial={serial}"
              + (f" origin={entry['origin']}" if entry["origin"] else ""))
    return 0
