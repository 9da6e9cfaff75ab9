"""Core metadata (PKG-INFO / METADATA) of distributions, as the field dict devpi uses.

Archives come from untrusted uploaders and upstreams, so reading is defensive: members are
only read into memory (never extracted), sizes and member counts are capped, and every
failure surfaces as MetadataError so callers need exactly one ``except``.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from devpid.model.names import normalize_name

__all__ = [
    "FIELDS",
    "LIST_FIELDS",
    "MAX_FIELD_SIZE",
    "MAX_MEMBERS",
    "MAX_METADATA_SIZE",
    "MAX_RELEASE_SIZE",
    "CoreMetadata",
    "MetadataError",
    "metadata_from_form",
    "parse_metadata_bytes",
    "read_core_metadata",
]

MAX_METADATA_SIZE = 10 * 1024 * 1024
MAX_MEMBERS = 100_000
# A release record is one store value and one changelog entry, copied to every replica and
# served in JSON pages: one field (a list field with all its items) and the whole record
# are bounded, measured as stored (JSON, ASCII-escaped).
MAX_FIELD_SIZE = 1024 * 1024
MAX_RELEASE_SIZE = 4 * 1024 * 1024

# Header name (lower case) -> devpi field key.
_HEADER_TO_FIELD: dict[str, str] = {
    "metadata-version": "metadata_version",
    "name": "name",
    "version": "version",
    "summary": "summary",
    "home-page": "home_page",
    "author": "author",
    "author-email": "author_email",
    "maintainer": "maintainer",
    "maintainer-email": "maintainer_email",
    "license": "license",
    "description": "description",
    "keywords": "keywords",
    "platform": "platform",
    "classifier": "classifiers",
    "download-url": "download_url",
    "supported-platform": "supported_platform",
    "project-url": "project_urls",
    "provides-dist": "provides_dist",
    "obsoletes-dist": "obsoletes_dist",
    "requires-dist": "requires_dist",
    "requires-external": "requires_external",
    "requires-python": "requires_python",
    "description-content-type": "description_content_type",
    "provides-extra": "provides_extras",
    "dynamic": "dynamic",
    "license-expression": "license_expression",
    "license-file": "license_file",
}

FIELDS: tuple[str, ...] = tuple(_HEADER_TO_FIELD.values())
LIST_FIELDS: frozenset[str] = frozenset(
    {
        "platform",
        "classifiers",
        "supported_platform",
        "project_urls",
        "provides_dist",
        "obsoletes_dist",
        "requires_dist",
        "requires_external",
        "provides_extras",
        "dynamic",
        "license_file",
    }
)

# Upload form keys that differ from our field keys: twine sends ``provides_extra``,
# devpi-client (via pkginfo) sends plural attribute names.
_FORM_ALIASES: dict[str, str] = {
    "platforms": "platform",
    "classifier": "classifiers",
    "supported_platforms": "supported_platform",
    "provides_extra": "provides_extras",
    "license_files": "license_file",
    "project_url": "project_urls",
}

_FOLD_RE = re.compile(r"\r?\n[ \t]*")


class MetadataError(ValueError):
    """The metadata of a distribution is missing, too large or unreadable."""


@dataclass(frozen=True)
class CoreMetadata:
    """Raw metadata bytes (served for PEP 658) plus the parsed field dict."""

    raw: bytes
    fields: dict[str, str | list[str]]

    @property
    def name(self) -> str:
        """The project name as written in the metadata."""
        value = self.fields.get("name", "")
        return value if isinstance(value, str) else ""

    @property
    def version(self) -> str:
        """The version as written in the metadata."""
        value = self.fields.get("version", "")
        return value if isinstance(value, str) else ""


def _unknown(value: str) -> str:
    return "" if value == "UNKNOWN" else value


def _decode(value: str) -> str:
    # BytesParser decodes as ASCII with surrogateescape; undo that and decode as UTF-8.
    return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")


def _unfold(value: str) -> str:
    return _FOLD_RE.sub(" ", value).strip()


def _dedent_description(value: str) -> str:
    """Undo the continuation-line escaping setuptools/distutils apply to a Description header."""
    lines = value.replace("\r\n", "\n").split("\n")
    out = [lines[0].lstrip()]
    for line in lines[1:]:
        if line.startswith(("       |", "        ")):
            out.append(line[8:])
        else:
            out.append(line.lstrip(" \t"))
    return "\n".join(out)


def parse_metadata_bytes(raw: bytes) -> CoreMetadata:
    """Parse core metadata in the email-header format; the body is the description.

    Requires Name and Version: without them the bytes are not metadata we can index.
    """
    if len(raw) > MAX_METADATA_SIZE:
        raise MetadataError(f"metadata is larger than {MAX_METADATA_SIZE} bytes")
    try:
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        msg = parser.parsebytes(raw, headersonly=True)
        fields: dict[str, str | list[str]] = {}
        for header, rawvalue in msg.raw_items():
            key = _HEADER_TO_FIELD.get(header.lower())
            if key is None:
                continue
            text = _decode(str(rawvalue))
            if key == "description":
                fields[key] = _unknown(_dedent_description(text))
            elif key in LIST_FIELDS:
                value = _unknown(_unfold(text))
                lst = fields.setdefault(key, [])
                if value and isinstance(lst, list):
                    lst.append(value)
            else:
                fields[key] = _unknown(_unfold(text))
        # The body is the description verbatim: drop any MIME transfer encoding header so
        # get_payload(decode=True) hands back the original bytes undecoded.
        del msg["Content-Transfer-Encoding"]
        payload = msg.get_payload(decode=True)
        body = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    except MetadataError:
        raise
    except Exception as e:  # the email package is lenient, but be sure
        raise MetadataError(f"cannot parse metadata: {e}") from e
    if body.strip():
        fields["description"] = _unknown(body)
    if not fields.get("name"):
        raise MetadataError("metadata has no Name field")
    if not fields.get("version"):
        raise MetadataError("metadata has no Version field")
    return CoreMetadata(raw=raw, fields=fields)


def metadata_from_form(form: Mapping[str, list[str]]) -> dict[str, str | list[str]]:
    """Build the metadata field dict from a legacy upload form; only present keys."""
    fields: dict[str, str | list[str]] = {}
    for formkey, values in form.items():
        key = _FORM_ALIASES.get(formkey, formkey)
        if key not in _HEADER_TO_FIELD.values():
            continue
        if key in LIST_FIELDS:
            lst = fields.setdefault(key, [])
            if isinstance(lst, list):
                lst.extend(v for v in (_unknown(x) for x in values) if v)
        elif values:
            fields[key] = _unknown(values[-1])
    return fields


def check_release_size(fields: Mapping[str, object]) -> None:
    """Refuse release metadata whose fields or total exceed the bounds (MetadataError).

    Work that grows with the record (it is up to a few MB): call it off the reactor.
    """
    total = 0
    for key, value in fields.items():
        size = len(json.dumps(value))
        if size > MAX_FIELD_SIZE:
            raise MetadataError(
                f"metadata field {key!r} is {size} bytes, more than the limit of "
                f"{MAX_FIELD_SIZE} bytes")
        total += size + len(key) + 4
    if total > MAX_RELEASE_SIZE:
        raise MetadataError(
            f"release metadata is {total} bytes, more than the limit of {MAX_RELEASE_SIZE} bytes")


# --- archives -------------------------------------------------------------------------


def _split_path(name: str) -> list[str]:
    """Member name as path components, ignoring ``./`` prefixes and empty parts."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _read_capped(fp: IO[bytes], declared_size: int, member: str) -> bytes:
    if declared_size > MAX_METADATA_SIZE:
        raise MetadataError(f"{member} is larger than {MAX_METADATA_SIZE} bytes")
    data = fp.read(MAX_METADATA_SIZE + 1)
    if len(data) > MAX_METADATA_SIZE:
        raise MetadataError(f"{member} is larger than {MAX_METADATA_SIZE} bytes")
    return data


def _capped(names: Iterable[str]) -> Iterator[str]:
    for count, name in enumerate(names):
        if count >= MAX_MEMBERS:
            raise MetadataError(f"archive has more than {MAX_MEMBERS} members")
        yield name


def _choose_sdist_pkginfo(names: Iterable[str], stem_hint: str) -> str | None:
    """Pick the PKG-INFO member of an sdist from its member names (see module rules)."""
    tops: set[str] = set()
    depth1: dict[str, str] = {}  # top dir -> member name
    depth2: list[str] = []
    for name in _capped(names):
        parts = _split_path(name)
        if not parts:
            continue
        tops.add(parts[0])
        if len(parts) == 2 and parts[1] == "PKG-INFO":
            depth1.setdefault(parts[0], name)
        elif len(parts) == 3 and parts[2] == "PKG-INFO" and parts[1].endswith(".egg-info"):
            depth2.append(name)
    if len(tops) == 1:
        (top,) = tops
        if top in depth1:
            return depth1[top]
    if depth1:
        for top, name in sorted(depth1.items()):
            if normalize_name(top) == normalize_name(stem_hint):
                return name
        return sorted(depth1.items())[0][1]
    if depth2:
        return sorted(depth2, key=lambda n: (len(_split_path(n)), n))[0]
    return None


def _wheel_metadata(zf: zipfile.ZipFile, filename: str) -> bytes:
    distinfos: dict[str, str | None] = {}
    for name in _capped(zf.namelist()):
        parts = _split_path(name)
        if parts and parts[0].endswith(".dist-info"):
            distinfos.setdefault(parts[0], None)
            if len(parts) == 2 and parts[1] == "METADATA":
                distinfos[parts[0]] = name
    if not distinfos:
        raise MetadataError(f"{filename}: wheel has no .dist-info directory")
    if len(distinfos) > 1:
        project = normalize_name(filename.split("-")[0])
        matching = {
            d: m for d, m in distinfos.items() if normalize_name(d.split("-")[0]) == project
        }
        if len(matching) != 1:
            raise MetadataError(
                f"{filename}: wheel has several .dist-info directories: {sorted(distinfos)}"
            )
        distinfos = matching
    ((distinfo, member),) = distinfos.items()
    if member is None:
        raise MetadataError(f"{filename}: {distinfo}/METADATA is missing")
    info = zf.getinfo(member)
    with zf.open(info) as fp:
        return _read_capped(fp, info.file_size, member)


def _zip_sdist_metadata(zf: zipfile.ZipFile, filename: str, stem: str) -> bytes:
    member = _choose_sdist_pkginfo(zf.namelist(), stem)
    if member is None:
        raise MetadataError(f"{filename}: no PKG-INFO found in sdist")
    info = zf.getinfo(member)
    with zf.open(info) as fp:
        return _read_capped(fp, info.file_size, member)


def _tar_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Stream members without tarfile's unbounded ``getmembers()``."""
    while True:
        info = tf.next()
        if info is None:
            return
        yield info


def _tar_sdist_metadata(tf: tarfile.TarFile, filename: str, stem: str) -> bytes:
    infos: dict[str, tarfile.TarInfo] = {}

    def names() -> Iterator[str]:
        for info in _tar_members(tf):
            if info.isreg():
                parts = _split_path(info.name)
                if parts and parts[-1] == "PKG-INFO":
                    infos.setdefault(info.name, info)
            yield info.name

    member = _choose_sdist_pkginfo(names(), stem)
    if member is None or member not in infos:
        raise MetadataError(f"{filename}: no PKG-INFO found in sdist")
    info = infos[member]
    fp = tf.extractfile(info)
    if fp is None:
        raise MetadataError(f"{filename}: {member} is not a regular file")
    with fp:
        return _read_capped(fp, info.size, member)


@contextmanager
def _errors_as_metadata_error(filename: str) -> Iterator[None]:
    try:
        yield
    except MetadataError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError) as e:
        raise MetadataError(f"{filename}: not a valid archive: {e}") from e
    except Exception as e:  # zlib/bz2/lzma errors, OSError, encrypted members...
        raise MetadataError(f"{filename}: cannot read archive: {e.__class__.__name__}: {e}") from e


def read_core_metadata(path: str | os.PathLike[str], filename: str) -> CoreMetadata:
    """Read and parse the core metadata of the wheel or sdist at ``path``.

    ``filename`` (the distribution's real name) decides the archive format, since stored
    blobs need not carry it.
    """
    with _errors_as_metadata_error(filename):
        if filename.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                raw = _wheel_metadata(zf, filename)
        elif filename.endswith(".zip"):
            stem = filename[: -len(".zip")]
            with zipfile.ZipFile(path) as zf:
                raw = _zip_sdist_metadata(zf, filename, stem)
        elif filename.endswith((".tar.gz", ".tgz", ".tar.bz2")):
            stem = re.sub(r"\.(tar\.gz|tgz|tar\.bz2)$", "", filename)
            with tarfile.open(path, mode="r:*") as tf:
                raw = _tar_sdist_metadata(tf, filename, stem)
        else:
            raise MetadataError(f"{filename}: cannot read metadata from this kind of file")
    try:
        return parse_metadata_bytes(raw)
    except MetadataError as e:
        raise MetadataError(f"{filename}: {e}") from e
