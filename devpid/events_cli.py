"""``devpid events list|retry``: see and re-deliver serials event hooks gave up on.

The running server owns the hooks' state, so this talks to it over HTTP (``/+status`` and the
root-only ``POST /+events/retry``) rather than editing the state file under its feet.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

HELP = "list or retry the serials event hooks/webhooks gave up on (talks to the server)"
DEFAULT_URL = "http://localhost:3141"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "retry"],
                        help="list: failed serials per hook; retry: deliver them again")
    parser.add_argument("serials", nargs="*", type=int,
                        help="retry only these serials (default: all failed ones)")
    parser.add_argument("--url", default=os.environ.get("DEVPID_URL", DEFAULT_URL),
                        help="the server (default $DEVPID_URL or %(default)s)")
    parser.add_argument("--hook", help="only this hook (default: every hook)")
    parser.add_argument("--user", default="root", help=argparse.SUPPRESS)
    parser.add_argument("--password",
                        help="root's password (default $DEVPID_PASSWORD, else prompt or stdin)")


def _request(url: str, *, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers={
        "Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"null")
        except ValueError:
            body = None
        return e.code, body


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if os.environ.get("DEVPID_PASSWORD") is not None:
        return os.environ["DEVPID_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password of {args.user}: ")
    return sys.stdin.readline().rstrip("\n")


def main(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        if args.action == "list":
            code, body = _request(base + "/+status")
            if code == 401:  # the server restricts its status (--status-acl): log in
                token = base64.b64encode(f"{args.user}:{_password(args)}".encode()).decode()
                code, body = _request(base + "/+status",
                                      headers={"Authorization": f"Basic {token}"})
            if code != 200 or not isinstance(body, dict):
                print(f"devpid: {base}/+status answered {code}", file=sys.stderr)
                return 1
            hooks = (body.get("result") or {}).get("event-hooks") or {}
            for name, state in sorted(hooks.items()):
                if args.hook and name != args.hook:
                    continue
                failed = state.get("failed") or []
                print(f"{name}: serial {state.get('serial')}, failed {failed or 'none'}")
            return 0
        token = base64.b64encode(f"{args.user}:{_password(args)}".encode()).decode()
        payload: dict[str, Any] = {}
        if args.hook:
            payload["hook"] = args.hook
        if args.serials:
            payload["serials"] = args.serials
        code, body = _request(base + "/+events/retry", data=json.dumps(payload).encode(),
                              headers={"Authorization": f"Basic {token}",
                                       "Content-Type": "application/json"})
    except (OSError, ValueError) as e:
        print(f"devpid: cannot reach {base}: {e}", file=sys.stderr)
        return 1
    message = body.get("message") if isinstance(body, dict) else None
    if code not in (200, 202):
        print(f"devpid: {base} answered {code}: {message or body}", file=sys.stderr)
        return 1
    queued = (body.get("result") or {}).get("queued") or {}
    for name, serials in sorted(queued.items()):
        print(f"{name}: retrying serials {serials}")
    print(f"devpid: {message}")
    return 0
