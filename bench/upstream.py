"""The benchmark's local upstream "PyPI": generated packages served on 127.0.0.1.

Run as a separate process by ``bench/run.py`` (so its HTTP threads do not share a GIL with
the load generators)::

    python bench/upstream.py --dir DIR

It builds (once; the archives are reproducible, so existing files are reused) the packages
listed in :data:`SMALL` / :data:`MANY` / :data:`SIZED`, serves them with
``tests.support.fakepypi`` (PEP 503/691/658), starts a second fake index whose root list has
780,000 extra project names, writes a static copy of the simple pages for nginx under
``DIR/static`` and prints one JSON line describing all of it. It serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from packaging.utils import canonicalize_name  # noqa: E402

from tests.support import pkgbuild  # noqa: E402
from tests.support.fakepypi import FakePyPI  # noqa: E402

# 15 small pure-Python projects, 3 versions each; pip/uv fetch the newest of each.
SMALL: list[str] = [f"bench-small-{i:02d}" for i in range(1, 16)]
SMALL_VERSIONS: list[str] = ["1.0.0", "1.1.0", "2.0.0"]
# A project with 2,000 versions (for the inheritance-chain page).
MANY = "bench-many"
MANY_COUNT = 2000
# Wheels of a given size (payload bytes; the archive adds ~1 KB).
SIZED: dict[str, int] = {
    "bench-file-1m": 1_250_000,
    "bench-file-5m": 5_000_000,
    "bench-file-50m": 50_000_000,
}
BIG_EXTRA_PROJECTS = 780_000
LAYOUT = 1  # bump when the generated set changes


def many_versions() -> list[str]:
    return [f"1.{i // 100}.{i % 100}" for i in range(MANY_COUNT)]


def _wheel(fake: FakePyPI, outdir: Path, name: str, version: str, extra: int = 0) -> None:
    path = outdir / pkgbuild.wheel_filename(name, version)
    if not path.exists():
        pkgbuild.make_wheel(outdir, name, version, extra_bytes=extra, summary=f"{name} bench")
    fake.add(path)


def populate(fake: FakePyPI, outdir: Path) -> None:
    for name in SMALL:
        for version in SMALL_VERSIONS:
            _wheel(fake, outdir, name, version)
    for version in many_versions():
        _wheel(fake, outdir, MANY, version)
    for name, size in SIZED.items():
        _wheel(fake, outdir, name, "1.0.0", size)


def write_static(fake: FakePyPI, static: Path) -> None:
    """simple/<project>/index.{html,json} as fakepypi renders them (links ../../files/F)."""
    projects = sorted({canonicalize_name(n) for n in [*SMALL, MANY, *SIZED]})
    for project in projects:
        d = static / "simple" / project
        d.mkdir(parents=True, exist_ok=True)
        for fmt in ("html", "json"):
            body = fake._render_project(project, fmt)
            assert body is not None
            (d / f"index.{fmt}").write_bytes(body)
    # PEP 658: the pages advertise core metadata, so nginx serves FILE.metadata beside FILE.
    for filename in fake.files():
        meta = fake._files[filename].metadata
        if meta is not None:
            (fake.directory / f"{filename}.metadata").write_bytes(meta)
    root = static / "simple"
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_bytes(fake._render_index("html").body)
    (root / "index.json").write_bytes(fake._render_index("json").body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/upstream.py")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--big-extra", type=int, default=BIG_EXTRA_PROJECTS)
    args = parser.parse_args(argv)
    files = args.dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    stamp = args.dir / "layout"
    if stamp.exists() and stamp.read_text().strip() != str(LAYOUT):
        for old in files.iterdir():
            old.unlink()
    stamp.write_text(str(LAYOUT))

    fake = FakePyPI(files)
    populate(fake, files)
    write_static(fake, args.dir / "static")
    big = FakePyPI(args.dir / "big-files", extra_project_names=args.big_extra)
    _wheel(big, args.dir / "big-files", "bench-small-01", "1.0.0")

    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fake.start()
    big.start()
    for f in (fake, big):  # render the root lists now, not during the first measurement
        f._render_index("html")
        f._render_index("json")
    sizes = {
        name: (files / pkgbuild.wheel_filename(name, "1.0.0")).stat().st_size for name in SIZED
    }
    info = {
        "url": fake.url,
        "big_url": big.url,
        "files_dir": str(files),
        "static_dir": str(args.dir / "static"),
        "small": SMALL,
        "many": MANY,
        "many_count": MANY_COUNT,
        "sized": {
            name: {
                "filename": pkgbuild.wheel_filename(name, "1.0.0"),
                "size": size,
                "sha256": fake.sha256(pkgbuild.wheel_filename(name, "1.0.0")),
            }
            for name, size in sizes.items()
        },
        "big_extra": args.big_extra,
    }
    print(json.dumps(info), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
        big.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
