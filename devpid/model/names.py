"""Names of users, indexes, projects and distribution files: normalization and validation.

Every name that ends up in a store key, a URL path or a file name passes through here, so
the rules are strict where a name could escape (``/``, ``..``, control characters) and
lenient where real-world uploads are messy (legacy sdist and binary file names).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

__all__ = [
    "ARCHIVE_EXTENSIONS",
    "MAX_FILENAME_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PROJECT_NAME_LENGTH",
    "SDIST_EXTENSIONS",
    "DistFile",
    "DistKind",
    "InvalidFilename",
    "check_safe_filename",
    "filename_matches",
    "normalize_name",
    "parse_dist_filename",
    "split_archive_extension",
    "validate_project_name",
    "validate_user_or_index_name",
]

MAX_NAME_LENGTH = 64
MAX_PROJECT_NAME_LENGTH = 200
MAX_FILENAME_BYTES = 255

_NORMALIZE_RE = re.compile(r"[-_.]+")
_USER_INDEX_RE = re.compile(r"^[A-Za-z0-9._@-]+$")
_PROJECT_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_PEP427_ESCAPE_RE = re.compile(r"[^\w\d.]+")
# Legacy fallback: split at the last ``-`` that is followed by a digit.
_LEGACY_NAME_VERSION_RE = re.compile(r"^(?P<name>.+)-(?P<version>\d.*)$")
# Suffixes that bdist_wininst/bdist_msi/bdist_dumb/bdist_dmg glue after the version.
_PYTAG_SUFFIX_RE = re.compile(r"-py\d[\d.]*.*$", re.IGNORECASE)
_PLATFORM_SUFFIX_RE = re.compile(
    r"[.-](win32|win-amd64|win_amd64|win-arm64|linux-.*|macosx.*)$", re.IGNORECASE
)

DistKind = Literal["wheel", "sdist", "other"]

# Allowed upload extensions mapped to the ``filetype`` (packagetype) an uploader sends.
# Longest first so that ``.tar.gz`` wins over a hypothetical ``.gz``.
ARCHIVE_EXTENSIONS: dict[str, str] = {
    ".tar.bz2": "sdist",
    ".tar.gz": "sdist",
    ".whl": "bdist_wheel",
    ".zip": "sdist",
    ".tgz": "sdist",
    ".egg": "bdist_egg",
    ".exe": "bdist_wininst",
    ".msi": "bdist_msi",
    ".rpm": "bdist_rpm",
    ".deb": "bdist_deb",
    ".dmg": "bdist_dmg",
}
SDIST_EXTENSIONS: tuple[str, ...] = (".tar.gz", ".tar.bz2", ".tgz", ".zip")


class InvalidFilename(ValueError):
    """A distribution file name we refuse to store or cannot interpret."""


@dataclass(frozen=True)
class DistFile:
    """What a distribution file name says about its contents."""

    filename: str
    project: str  # normalized (PEP 503)
    version: str  # as written in the file name
    kind: DistKind
    packagetype: str  # bdist_wheel, sdist, bdist_egg, ...


def normalize_name(name: str) -> str:
    """PEP 503 normalization, so ``Foo_Bar`` and ``foo.bar`` are one project."""
    return _NORMALIZE_RE.sub("-", name).lower()


def validate_user_or_index_name(name: str, kind: str = "name") -> str | None:
    """Return an error message if ``name`` is unusable as a user or index name, else None.

    These names become URL path segments and store key parts, so only a conservative
    ASCII set is allowed. ``kind`` ("user name", "index name") only flavours the message.
    """
    if not name:
        return f"{kind} must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"{kind} {name!r} is invalid: longer than {MAX_NAME_LENGTH} characters"
    if name in (".", ".."):
        return f"{kind} {name!r} is invalid"
    if not _USER_INDEX_RE.match(name):
        return f"{kind} {name!r} is invalid: only letters, digits and -._@ are allowed"
    if name.startswith((".", "+")):
        return f"{kind} {name!r} is invalid: must not start with '.' or '+'"
    return None


def validate_project_name(name: str) -> str | None:
    """Return an error message if ``name`` is not a valid PEP 508 project name, else None."""
    if not name:
        return "project name must not be empty"
    if len(name) > MAX_PROJECT_NAME_LENGTH:
        return (
            f"project name {name[:50]!r}... is invalid: "
            f"longer than {MAX_PROJECT_NAME_LENGTH} characters"
        )
    if not _PROJECT_RE.match(name):
        return (
            f"project name {name!r} is invalid: must consist of ASCII letters, digits, "
            "'-', '_' and '.', and start and end with a letter or digit"
        )
    return None


def split_archive_extension(filename: str) -> tuple[str, str] | None:
    """Split ``filename`` into (stem, extension) for an allowed extension, else None."""
    for ext in ARCHIVE_EXTENSIONS:
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)], ext
    return None


def _legacy_split(stem: str, filename: str) -> tuple[str, str]:
    m = _LEGACY_NAME_VERSION_RE.match(stem)
    if m is None:
        raise InvalidFilename(f"filename {filename!r} does not contain a version")
    return m.group("name"), m.group("version")


def _check_project_part(project: str, filename: str) -> None:
    if validate_project_name(project) is not None:
        raise InvalidFilename(f"filename {filename!r} has an invalid project name {project!r}")


def _parse_wheel(filename: str) -> DistFile:
    try:
        name, _version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as e:
        raise InvalidFilename(f"invalid wheel filename {filename!r}: {e}") from e
    written_version = filename.split("-")[1]
    return DistFile(filename, normalize_name(name), written_version, "wheel", "bdist_wheel")


def _parse_sdist(filename: str, stem: str, ext: str) -> DistFile:
    # packaging only knows .tar.gz and .zip; feed it an equivalent name for the others.
    probe = stem + (".zip" if ext == ".zip" else ".tar.gz")
    try:
        parse_sdist_filename(probe)
        project_part, _, version = stem.rpartition("-")
    except InvalidSdistFilename:
        project_part, version = _legacy_split(stem, filename)
    _check_project_part(project_part, filename)
    dumb = _PLATFORM_SUFFIX_RE.search(version)
    if dumb and dumb.start() > 0:
        # bdist_dumb: name-version.platform.tar.gz / .zip, a built (not source) archive
        return DistFile(filename, normalize_name(project_part), version[: dumb.start()],
                        "other", "bdist_dumb")
    return DistFile(filename, normalize_name(project_part), version, "sdist", "sdist")


def _parse_other(filename: str, stem: str, ext: str) -> DistFile:
    packagetype = ARCHIVE_EXTENSIONS[ext]
    if ext == ".egg":
        # name-version(-pyX.Y(-platform)?)?.egg, with '-' escaped to '_' in the parts
        parts = stem.split("-")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise InvalidFilename(f"filename {filename!r} does not contain a version")
        project, version = parts[0], parts[1]
    elif ext == ".rpm":
        # name-version-release.arch.rpm
        base = stem.rsplit(".", 1)[0] if "." in stem else stem
        parts = base.rsplit("-", 2)
        if len(parts) == 3 and parts[1][:1].isdigit():
            project, version = parts[0], parts[1]
        else:
            project, version = _legacy_split(base, filename)
    elif ext == ".deb":
        # name_version-debrevision_arch.deb
        parts = stem.split("_")
        if len(parts) >= 2 and parts[1][:1].isdigit():
            project, version = parts[0], parts[1].split("-")[0]
        else:
            project, version = _legacy_split(stem, filename)
    else:
        # .exe / .msi / .dmg: name-version.platform(-pyX.Y)?.ext
        project, version = _legacy_split(stem, filename)
        version = _PYTAG_SUFFIX_RE.sub("", version)
        version = _PLATFORM_SUFFIX_RE.sub("", version)
    _check_project_part(project, filename)
    if not version:
        raise InvalidFilename(f"filename {filename!r} does not contain a version")
    return DistFile(filename, normalize_name(project), version, "other", packagetype)


def parse_dist_filename(filename: str) -> DistFile:
    """Interpret an uploaded or mirrored file name; raise InvalidFilename if we cannot."""
    split = split_archive_extension(filename)
    if split is None:
        raise InvalidFilename(f"filename {filename!r} has an unsupported archive extension")
    stem, ext = split
    if ext == ".whl":
        return _parse_wheel(filename)
    if ext in SDIST_EXTENSIONS:
        return _parse_sdist(filename, stem, ext)
    return _parse_other(filename, stem, ext)


MAX_VERSION_LENGTH = 128


def validate_version(version: str) -> str | None:
    """Why ``version`` cannot name a release (file or docs), or None. Versions become parts of
    URLs, file names and pages: no control or format characters, spaces, path or URL syntax."""
    if not version:
        return "version must not be empty"
    if len(version) > MAX_VERSION_LENGTH:
        return f"version is longer than {MAX_VERSION_LENGTH} characters"
    if any(unicodedata.category(c)[0] in "CZ" for c in version):
        return f"version {version!r} contains control, format or space characters"
    if any(c in version for c in '<>%#"/\\?'):
        return f"version {version!r} contains invalid characters"
    if version.startswith(".") or ".." in version:
        return f"version {version!r} must not start with '.' or contain '..'"
    return None


def check_safe_filename(filename: str) -> None:
    """Raise InvalidFilename unless ``filename`` is safe to use as a single path component."""
    if not filename:
        raise InvalidFilename("filename must not be empty")
    if "/" in filename or "\\" in filename:
        raise InvalidFilename(f"filename {filename!r} must not contain path separators")
    if any(unicodedata.category(c) == "Cc" for c in filename):
        raise InvalidFilename(f"filename {filename!r} must not contain control characters")
    if filename in (".", "..") or filename.startswith("."):
        raise InvalidFilename(f"filename {filename!r} must not start with '.'")
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates from a badly decoded request
        raise InvalidFilename(f"filename {filename!r} is not valid unicode") from e
    if len(encoded) > MAX_FILENAME_BYTES:
        raise InvalidFilename(
            f"filename {filename[:50]!r}... is longer than {MAX_FILENAME_BYTES} bytes"
        )
    if split_archive_extension(filename) is None:
        raise InvalidFilename(f"filename {filename!r} has an unsupported archive extension")


def _pep427_escape(version: str) -> str:
    return _PEP427_ESCAPE_RE.sub("_", version)


def _versions_equal(written: str, expected: str) -> bool:
    if written == expected or written == _pep427_escape(expected):
        return True
    try:
        return Version(written) == Version(expected)
    except InvalidVersion:
        return False


def filename_matches(filename: str, project: str, version: str) -> str | None:
    """Return an error message if an upload's file name does not belong to project/version.

    Guards against a release being filled with files of another project or version.
    """
    try:
        dist = parse_dist_filename(filename)
    except InvalidFilename as e:
        return str(e)
    if dist.project != normalize_name(project):
        return f"filename {filename!r} does not match project name {project!r}"
    if _versions_equal(dist.version, version):
        return None
    if dist.kind == "other" and (version in filename or _pep427_escape(version) in filename):
        # Best-effort parsing of legacy binary formats may have cut the version badly.
        return None
    return f"filename {filename!r} does not contain version {version!r}"
