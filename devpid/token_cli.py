"""``devpid token create|list|revoke``: scoped API tokens through a running server's REST API
(``/USER/+tokens``, devpid/web/tokens.py), authenticated with the user's password."""

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

from devpid.tokens import ACTIONS, DEFAULT_LIFETIME

HELP = "create, list and revoke scoped API tokens (for CI) on a running server"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def lifetime(text: str) -> int:
    """``3600``, ``90m``, ``12h``, ``30d``."""
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 12h, 30d)")
    return int(number) * (unit or 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("DEVPID_URL", "http://localhost:3141"),
                   help="the server (default $DEVPID_URL or http://localhost:3141)")
    p.add_argument("--user", required=True, help="whose tokens")
    p.add_argument("--password", help="the user's password (default $DEVPID_PASSWORD, "
                   "else a prompt)")
    p.add_argument("--as", dest="actor", help="authenticate as this user instead (root)")
    sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="mint a token; prints it once")
    c.add_argument("--index", action="append", required=True, dest="indexes",
                   help="USER/INDEX it is valid for (repeat for more)")
    c.add_argument("--action", action="append", choices=ACTIONS, dest="actions",
                   help="what it may do (repeat; default read)")
    c.add_argument("--expires", type=lifetime, default=DEFAULT_LIFETIME,
                   help="lifetime: seconds or 90m, 12h, 30d (default 1d)")
    c.add_argument("--description", default="")
    sub.add_parser("list", help="the user's tokens (never their secrets)")
    r = sub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("token_id")


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    password = args.password or os.environ.get("DEVPID_PASSWORD")
    if password is None:
        password = getpass.getpass(f"password of {args.actor or args.user}: ")
    auth = base64.b64encode(f"{args.actor or args.user}:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        args.url.rstrip("/") + path, data=data, method=method,
        headers={"Accept": "application/json", "Content-Type": "application/json",
                 "Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            message = e.reason
        raise SystemExit(f"devpid: {e.code} {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"devpid: cannot reach {args.url}: {e}") from None


def main(args: argparse.Namespace) -> int:
    base = f"/{args.user}/+tokens"
    if args.token_command == "create":
        answer = _call(args, "POST", base, {
            "indexes": args.indexes, "actions": args.actions or ["read"],
            "expires_in": args.expires, "description": args.description})
        result = answer["result"]
        print(result["token"])
        print(f"devpid: token {result['id']} for {', '.join(result['indexes'])} "
              f"({', '.join(result['actions'])}); shown only now", file=sys.stderr)
    elif args.token_command == "list":
        for t in _call(args, "GET", base)["result"]:
            print(json.dumps(t, sort_keys=True))
    else:
        print(_call(args, "DELETE", f"{base}/{args.token_id}").get("message", "revoked"))
    return 0
