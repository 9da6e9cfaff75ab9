"""``devpi-server`` / ``devpi-init`` stand-ins that run devpid, for devpi-client's own suite.

devpi-client's test fixtures ask ``devpi-server --version`` which server behaviour to expect,
``devpi-server -h`` for optional flags, and start a second server of their own with
``devpi-init --no-root-pypi`` then ``devpi-server --serverdir D --host H --port P``. This
script answers the first two as the devpi-server version devpid follows
(``devpid.DEVPI_SERVER_COMPAT``) and maps the others to ``devpid init`` and ``twistd -n devpid``.
Scratch ``devpi-server`` and ``devpi-init`` scripts run it with their role as first argument
(see ``install``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from devpid import DEVPI_SERVER_COMPAT as COMPAT_VERSION

BIN = Path(sys.executable).parent
#: devpi-server's policy, which the suite assumes: every user may create mirrors, its
#: upstreams are on loopback and every visitor sees users' emails (devpid refuses all three
#: by default).
DEVPI_POLICY = ("--mirror-admins", ":AUTHENTICATED:", "--allow-private-addresses",
                "--max-login-failures", "0", "--public-emails")


def devpi_init(argv: list[str]) -> int:
    """``devpi-init``: a devpid server directory with root's empty password, as devpi's."""
    parser = argparse.ArgumentParser(prog="devpi-init")
    parser.add_argument("--serverdir", required=True)
    parser.add_argument("--no-root-pypi", action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    cmd = [str(BIN / "devpid"), "init", "--serverdir", args.serverdir,
           "--root-password", "", "--bcrypt-rounds", "4"]
    if args.no_root_pypi:
        cmd.append("--no-root-pypi")
    os.execv(cmd[0], cmd)
    return 1  # not reached


def devpi_server(argv: list[str]) -> int:
    """``devpi-server``: version and help answers, or the devpid daemon in the foreground."""
    if "--version" in argv:
        print(COMPAT_VERSION)
        return 0
    if "-h" in argv or "--help" in argv:
        print("usage: devpi-server [--serverdir DIR] [--host HOST] [--port PORT] [--debug]"
              "\n(devpid stand-in for devpi-client's test suite)")
        return 0
    parser = argparse.ArgumentParser(prog="devpi-server")
    parser.add_argument("--serverdir", required=True)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", default="3141")
    args, _unknown = parser.parse_known_args(argv)
    cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "devpid", "--serverdir", args.serverdir,
           "--host", args.host, "--port", args.port, "--bcrypt-rounds", "4", *DEVPI_POLICY]
    os.execv(cmd[0], cmd)
    return 1  # not reached


def install(bindir: Path) -> None:
    """Write ``devpi-server`` and ``devpi-init`` into ``bindir``, running this module."""
    bindir.mkdir(parents=True, exist_ok=True)
    for role in ("devpi-server", "devpi-init"):
        script = bindir / role
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {role} "$@"\n')
        script.chmod(0o755)


def main() -> int:
    role, argv = sys.argv[1], sys.argv[2:]
    return devpi_init(argv) if role == "devpi-init" else devpi_server(argv)


if __name__ == "__main__":
    sys.exit(main())
