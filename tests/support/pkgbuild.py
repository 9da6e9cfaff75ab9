"""Build real, installable distributions for tests without any build backend.

Running setuptools/hatch in every test is slow and needs network for build
deps; wheels and sdists are just archives with a few well-defined text files,
so we write those directly.  Output is byte-for-byte reproducible for the same
arguments (fixed zip timestamps, seeded "random" payload) so benchmarks and
hash comparisons are stable across runs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "dist_name",
    "import_name",
    "make_sdist",
    "make_wheel",
    "metadata_bytes",
    "wheel_filename",
]

# Fixed timestamp so archives are reproducible (zip cannot go below 1980).
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_TAR_MTIME = 1577836800  # 2020-01-01T00:00:00Z
_PAYLOAD_NAME = "_payload.bin"


def dist_name(name: str) -> str:
    """Wheel/dist-info form of a project name (PEP 427 + PEP 503 normalization)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def import_name(name: str) -> str:
    """A valid Python identifier derived from an arbitrary project name."""
    ident = re.sub(r"\W+", "_", name).strip("_").lower() or "pkg"
    if ident[0].isdigit():
        ident = "_" + ident
    return ident


def wheel_filename(name: str, version: str) -> str:
    """The file name make_wheel() produces, so callers can predict it."""
    return f"{dist_name(name)}-{version}-py3-none-any.whl"


def metadata_bytes(
    name: str,
    version: str,
    requires_python: str | None = None,
    requires_dist: Sequence[str] = (),
    summary: str = "",
    description: str = "",
) -> bytes:
    """Core metadata (METADATA / PKG-INFO) shared by wheel and sdist.

    Exposed so tests can compare it with the PEP 658 ``.metadata`` file that the
    server serves.
    """
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {summary}",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires_dist)
    text = "\n".join(lines) + "\n"
    if description:
        text += "Description-Content-Type: text/plain\n\n" + description
        if not description.endswith("\n"):
            text += "\n"
    return text.encode("utf-8")


def _module_source(version: str) -> bytes:
    return f'"""Generated test package."""\n__version__ = "{version}"\n'.encode()


def _payload(name: str, version: str, size: int) -> bytes:
    """Incompressible but reproducible bytes (seeded by name and version)."""
    seed = int.from_bytes(hashlib.sha256(f"{name}=={version}".encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    outdir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Sequence[str] = (),
    summary: str = "",
    extra_bytes: int = 0,
    description: str = "",
) -> Path:
    """Write a pure-Python ``py3-none-any`` wheel that pip and uv will install.

    ``extra_bytes`` adds an uncompressed, incompressible data file so tests can
    produce wheels of a known (large) size cheaply.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dname = dist_name(name)
    mod = import_name(name)
    distinfo = f"{dname}-{version}.dist-info"

    files: list[tuple[str, bytes, int]] = [
        (f"{mod}/__init__.py", _module_source(version), zipfile.ZIP_DEFLATED),
    ]
    if extra_bytes > 0:
        files.append(
            (f"{mod}/{_PAYLOAD_NAME}", _payload(name, version, extra_bytes), zipfile.ZIP_STORED)
        )
    wheel_meta = (
        b"Wheel-Version: 1.0\n"
        b"Generator: devpid-tests-pkgbuild\n"
        b"Root-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    files.append(
        (
            f"{distinfo}/METADATA",
            metadata_bytes(name, version, requires_python, requires_dist, summary, description),
            zipfile.ZIP_DEFLATED,
        )
    )
    files.append((f"{distinfo}/WHEEL", wheel_meta, zipfile.ZIP_DEFLATED))
    files.append((f"{distinfo}/top_level.txt", f"{mod}\n".encode(), zipfile.ZIP_DEFLATED))
    record = "".join(_record_line(p, d) + "\n" for p, d, _ in files)
    record += f"{distinfo}/RECORD,,\n"
    files.append((f"{distinfo}/RECORD", record.encode(), zipfile.ZIP_DEFLATED))

    target = outdir / wheel_filename(name, version)
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w") as zf:
        for path, data, compression in files:
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    tmp.replace(target)  # atomic: a server scanning the dir never sees half a wheel
    return target


def _pyproject(
    name: str, version: str, requires_python: str | None, requires_dist: Sequence[str], summary: str
) -> bytes:
    def q(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[build-system]",
        'requires = ["setuptools>=61"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {q(name)}",
        f"version = {q(version)}",
        f"description = {q(summary)}",
    ]
    if requires_python:
        lines.append(f"requires-python = {q(requires_python)}")
    lines.append("dependencies = [" + ", ".join(q(r) for r in requires_dist) + "]")
    lines += ["", "[tool.setuptools]", f"packages = [{q(import_name(name))}]", ""]
    return "\n".join(lines).encode()


def make_sdist(
    outdir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Sequence[str] = (),
    summary: str = "",
    fmt: Literal["tar.gz", "zip"] = "tar.gz",
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write an sdist ``{name}-{version}.{fmt}`` with PKG-INFO, pyproject.toml and module.

    ``extra_files`` adds members below the top directory (e.g. a ``tox.ini``).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    top = f"{name}-{version}"
    mod = import_name(name)
    members = [
        (f"{top}/PKG-INFO", metadata_bytes(name, version, requires_python, requires_dist, summary)),
        (
            f"{top}/pyproject.toml",
            _pyproject(name, version, requires_python, requires_dist, summary),
        ),
        (f"{top}/{mod}/__init__.py", _module_source(version)),
        *((f"{top}/{path}", data) for path, data in (extra_files or {}).items()),
    ]
    target = outdir / f"{top}.{fmt}"
    tmp = target.with_name(target.name + ".part")
    if fmt == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in members:
                info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    elif fmt == "tar.gz":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for path, data in members:
                tinfo = tarfile.TarInfo(path)
                tinfo.size = len(data)
                tinfo.mtime = _TAR_MTIME
                tinfo.mode = 0o644
                tf.addfile(tinfo, io.BytesIO(data))
        tmp.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    else:
        raise ValueError(f"unsupported sdist format: {fmt!r}")
    tmp.replace(target)
    return target
