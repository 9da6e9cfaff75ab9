"""Served paths: where below the server root a stored file, doc zip or test report is found.

Paths follow devpi's layout (spec 4.5), which clients and devpi-client see in hrefs:
``{stage}/+f/{h[:3]}/{h[3:16]}/{filename}`` for uploads and mirror files with a hash,
``{stage}/+e/{scheme_host_port_dirs}/{filename}`` for mirror links without one. Paths are
keys of the store's path table, so every part is checked here: a name with ``/``, ``..`` or a
control character never makes a path (``UnsafePath``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

FILES_AREA = "+f"
EXTERNAL_AREA = "+e"
DOC_AREA = "+doc"
DOCS_PAGE = "+docs"

_HEX = re.compile(r"[0-9a-f]{16,128}")
_UNSAFE_DIR_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")


class UnsafePath(ValueError):
    """A name or path that would not stay one path segment (or below its stage).

    ``path`` is what was asked for, unchecked (for a "not found" message)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def check_segment(part: str, what: str = "path segment") -> str:
    """``part`` if it is usable as one path segment, else UnsafePath."""
    if not part or part in (".", "..") or "/" in part or "\\" in part:
        raise UnsafePath(f"{what} {part!r} is not a single path segment")
    if any(unicodedata.category(c) == "Cc" for c in part):
        raise UnsafePath(f"{what} {part!r} contains control characters")
    return part


def check_relative(rest: str) -> str:
    """A path below a stage area (from a URL or an export): relative, without ``.``/``..``
    or empty segments, backslashes or control characters."""
    for part in rest.split("/"):
        check_segment(part)
    return rest


def _digest(sha: str) -> str:
    if not _HEX.fullmatch(sha):
        raise UnsafePath(f"{sha!r} is not a hex digest")
    return sha


def file_dir(stage: str, sha256: str) -> str:
    """The directory of the ``+f`` path of content with hash ``sha256``."""
    sha = _digest(sha256)
    return f"{stage}/{FILES_AREA}/{sha[:3]}/{sha[3:16]}"


def file_path(stage: str, sha256: str, filename: str) -> str:
    """Where an uploaded (or hashed mirror) file, or a docs zip, is served."""
    return f"{file_dir(stage, sha256)}/{check_segment(filename, 'filename')}"


def in_dir(directory: str, filename: str) -> str:
    """``filename`` in a served directory (``file_dir``)."""
    return f"{directory}/{check_segment(filename, 'filename')}"


def beside(path: str, filename: str) -> str:
    """A path in the same directory as ``path`` (a test report next to its file)."""
    return f"{path.rsplit('/', 1)[0]}/{check_segment(filename, 'filename')}"


def external_path(stage: str, url: str, filename: str) -> str:
    """Where a mirror serves an upstream file whose link came without a hash."""
    parts = urlsplit(url)
    dirs = [unquote(d) for d in parts.path.split("/")[:-1] if d]
    dirname = _UNSAFE_DIR_CHARS.sub(
        "_", "_".join([parts.scheme, parts.netloc.rpartition("@")[2], *dirs]))
    return f"{stage}/{EXTERNAL_AREA}/{dirname}/{check_segment(filename, 'filename')}"


def mirror_file_path(stage: str, filename: str, hashes: Mapping[str, str], url: str) -> str:
    """A mirror file's path: by its sha256 (else the hash upstream gave), else by its URL."""
    value = hashes.get("sha256") or next(iter(hashes.values()), None)
    if value:
        return f"{stage}/{FILES_AREA}/{value[:3]}/{value[3:16]}/{check_segment(filename)}"
    return external_path(stage, url, filename)


def in_area(stage: str, area: str, rest: str) -> str:
    """The served path ``{stage}/{area}/{rest}`` a request names (``rest`` from the URL)."""
    path = f"{stage}/{area}/{rest}"
    if area not in (FILES_AREA, EXTERNAL_AREA):
        raise UnsafePath(f"unknown area {area!r}", path)
    try:
        check_relative(rest)
    except UnsafePath as e:
        raise UnsafePath(str(e), path) from None
    return path


def stage_relative(stage: str, path: str) -> str:
    """``path`` without its ``{stage}/`` (what the JSON API and exports show)."""
    prefix = f"{stage}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def project_url(stage: str, project: str) -> str:
    return f"{stage}/{project}"


def release_url(stage: str, project: str, version: str) -> str:
    return f"{stage}/{project}/{version}"


def docs_url(stage: str, project: str, version: str) -> str:
    """The unpacked docs of a release (read out of its zip)."""
    return f"{release_url(stage, project, version)}/{DOC_AREA}/"


def docs_page_url(stage: str, project: str, version: str) -> str:
    """The web view's page that frames a release's docs."""
    return f"{release_url(stage, project, version)}/{DOCS_PAGE}"
