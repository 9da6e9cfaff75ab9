"""Nodes that share one token secret file (``--secretfile``, as gen-config's template unit
does) and start together must all end up signing with the bytes in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devpid.auth import load_or_create_secret

SCRIPT = (
    "import sys, time; from pathlib import Path; from devpid.auth import load_or_create_secret\n"
    "start = float(sys.argv[2])\n"
    "while time.time() < start: pass\n"
    "print(load_or_create_secret(Path(sys.argv[1])).hex())\n"
)


def test_nodes_starting_together_share_one_secret(tmp_path: Path) -> None:
    import time

    for attempt in range(5):
        path = tmp_path / str(attempt) / ".secret"
        start = str(time.time() + 1.0)
        procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(path), start],
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        seen = {p.communicate(timeout=30)[0].strip() for p in procs}
        assert seen == {path.read_bytes().hex()}
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in path.parent.iterdir()] == [".secret"]  # no temp files left
        assert load_or_create_secret(path).hex() in seen
