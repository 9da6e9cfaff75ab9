"""``devpid mirror prefetch``: warm a server's mirror cache with what a requirements file needs.

For laptops and air-gapped sites: run it while the upstream is reachable, and a server later
started with ``--offline-mode`` installs the same requirements. The resolve is pip's own
(``pip download`` through the server, isolated from pip's configuration and without its
HTTP cache), so exactly the pages, core metadata and files an install asks for are fetched
and cached by the server, with the server's policy (release cooldown, whitelist) applied.
Requirements files with hashes (``pip-compile``, ``uv pip compile``, ``uv export``) work.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELP = "mirror tools: 'prefetch -r requirements.txt' caches what installing it needs"
DEFAULT_INDEX_URL = "http://localhost:3141/root/pypi/+simple/"
_PROGRESS = ("Collecting ", "Downloading ", "Saved ", "File was already downloaded")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mirror_command", required=True, metavar="ACTION")
    p = sub.add_parser(
        "prefetch", help="fetch the pages and files installing requirements needs, through a "
        "running server, so a later --offline-mode server can install them",
    )
    p.add_argument("-r", "--requirement", action="append", required=True, metavar="FILE",
                   help="a requirements file (repeatable)")
    p.add_argument("--index-url", default=DEFAULT_INDEX_URL,
                   help="the server's simple index to fill (default %(default)s)")
    p.add_argument("--python-version", help="resolve for this Python (e.g. 3.12; wheels only)")
    p.add_argument("--platform", action="append",
                   help="resolve for this platform tag (repeatable; wheels only)")
    p.add_argument("--retries", type=int, default=2,
                   help="retries per request pip makes (default %(default)s)")
    p.add_argument("--dest", help="keep the downloaded files here (default: a temporary "
                   "directory, removed afterwards)")


def pip_command(args: argparse.Namespace, dest: str) -> list[str]:
    """The pip invocation: isolated (no config can add another index) and uncached (so every
    file really goes through the server)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
        "--disable-pip-version-check", "--progress-bar", "off", "--no-input",
        "--index-url", args.index_url, "--dest", dest, "--retries", str(args.retries),
    ]
    if args.python_version or args.platform:
        cmd.append("--only-binary=:all:")
    if args.python_version:
        cmd += ["--python-version", args.python_version]
    for platform in args.platform or ():
        cmd += ["--platform", platform]
    for requirement in args.requirement:
        cmd += ["-r", requirement]
    return cmd


def main(args: argparse.Namespace) -> int:
    if getattr(args, "mirror_command", None) != "prefetch":
        print("devpid: usage: devpid mirror prefetch -r FILE", file=sys.stderr)
        return 2
    missing = [r for r in args.requirement if not Path(r).is_file()]
    if missing:
        print(f"devpid: no such requirements file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pip") is None:
        print("devpid: prefetch needs pip in devpid's environment", file=sys.stderr)
        return 2
    dest = args.dest or tempfile.mkdtemp(prefix="devpid-prefetch-")
    Path(dest).mkdir(parents=True, exist_ok=True)
    before = {p.name for p in Path(dest).iterdir()}
    output: list[str] = []
    try:
        proc = subprocess.Popen(
            pip_command(args, dest), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None
        step = 0
        for line in proc.stdout:
            line = line.strip()
            output.append(line)
            if line.startswith("Collecting "):
                step += 1
            if line.startswith(_PROGRESS):
                print(f"devpid: [{step}] {line}", flush=True)
        rc = proc.wait()
        files = sorted(p for p in Path(dest).iterdir() if p.is_file())
        size = sum(p.stat().st_size for p in files)
        if rc != 0:
            tail = "\n".join(output[-15:])
            print(f"devpid: prefetch failed (pip exited {rc}); cached so far stays cached:\n"
                  f"{tail}", file=sys.stderr)
            return 1
        new = len([p for p in files if p.name not in before])
        print(f"devpid: prefetched {len(files)} files ({size / 1e6:.1f} MB, {new} new here) "
              f"for {step} projects through {args.index_url}")
        return 0
    finally:
        if not args.dest:
            shutil.rmtree(dest, ignore_errors=True)
