"""The logical key layout: the one place that knows how state is named in the store.

Keys are ``kind/part/part...``; user, index and project parts are validated names (never
containing ``/``), so a prefix scan of ``release/alice/dev/foo/`` finds exactly foo's releases.
``{stage}`` is ``user/index``; ``{p}`` is the PEP 503 normalised project name.

=============================== ==========================================================
key                             value (JSON)
=============================== ==========================================================
``user/{u}``                    ``{"pwhash", "created", "modified"?, "email"?, "title"?,
                                "description"?, "custom_data"?}`` (pwhash: bcrypt)
``index/{stage}``               the index config (devpi's keys, see model/indexes.py)
``project/{stage}/{p}``         a private project: ``{"name": display name, "created"}``
``release/{stage}/{p}/{v}``     release metadata with devpi's field names (name, version,
                                summary, requires_python, requires_dist, ...)
``file/{stage}/{p}/{filename}`` a stored file: ``{"filename", "path", "sha256", "size",
                                "version", "upload_time", "requires_python", "yanked",
                                "metadata_sha256"?, "log": [...], "url"? (mirror origin)}``;
                                ``path`` is ``{stage}/+f/{h[:3]}/{h[3:16]}/{filename}`` and
                                the bytes are the blob ``sha256``
``doc/{stage}/{p}/{v}``         a docs zip: ``{"filename", "path", "sha256", "size",
                                "upload_time", "log"}``
``toxresult/{stage}/{p}/{file}/{n}`` a test report for stored file ``file``: ``{"filename",
                                "path", "sha256", "size", "for", "version", "upload_time",
                                "log"}``; ``path`` is next to the file's
``mirror/{stage}/{p}``          a mirror's cached upstream page: ``{"name", "files": [
                                UpstreamFile json + "path"], "etag", "upstream_serial"}``
=============================== ==========================================================
"""

from __future__ import annotations

from typing import Any


def user(u: str) -> str:
    return f"user/{u}"


def index(u: str, i: str) -> str:
    return f"index/{u}/{i}"


def project(stage: str, p: str) -> str:
    """A private project record (``stage`` is ``user/index``)."""
    return f"project/{stage}/{p}"


def release(stage: str, p: str, version: str) -> str:
    return f"release/{stage}/{p}/{version}"


def release_prefix(stage: str, p: str) -> str:
    return f"release/{stage}/{p}/"


def file(stage: str, p: str, filename: str) -> str:
    """A stored distribution file (an upload, or a mirror file once it is cached)."""
    return f"file/{stage}/{p}/{filename}"


def file_prefix(stage: str, p: str) -> str:
    return f"file/{stage}/{p}/"


def doc(stage: str, p: str, version: str) -> str:
    return f"doc/{stage}/{p}/{version}"


def toxresult_prefix(stage: str, p: str, filename: str) -> str:
    """The test reports attached to one stored file (``{prefix}{n}``, n = 0, 1, ...)."""
    return f"toxresult/{stage}/{p}/{filename}/"


def mirror_page(stage: str, p: str) -> str:
    """A mirror's cached view of one upstream project page."""
    return f"mirror/{stage}/{p}"


def split(key: str) -> list[str]:
    return key.split("/")


BLOB_FIELDS = ("sha256", "metadata_sha256")
RECORD_KINDS = ("file", "doc", "toxresult")  # the kinds of key whose values own blobs


def record_blobs(key: str, value: Any) -> list[str]:
    """The blob digests a stored file or doc record owns (what export and replication copy).

    Values are returned as stored; callers that need a valid digest check it.
    """
    if key.split("/", 1)[0] not in RECORD_KINDS or not isinstance(value, dict):
        return []
    return [value[f] for f in BLOB_FIELDS if isinstance(value.get(f), str)]


def mirror_page_blobs(value: Any) -> list[str]:
    """The digests a cached mirror page declares for its files and their core metadata.

    A blob under one of them is the verified content of that upstream file, whether or not a
    ``file/`` record names it yet (a replica caches mirror files it fetched itself).
    """
    out: list[str] = []
    for entry in value.get("files", ()) if isinstance(value, dict) else ():
        if not isinstance(entry, dict):
            continue
        for hashes in (entry.get("hashes"), entry.get("core_metadata")):
            if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
                out.append(hashes["sha256"].lower())
    return out


def paths_of(key: str, value: Any) -> list[tuple[str, str]]:
    """The served URL paths (``user/index/+f/...``) a stored value makes reachable.

    Derived from the value so that the path table can be rebuilt from the changelog by any
    store (primary, replica, import) without extra changelog entries.
    """
    if not isinstance(value, dict):
        return []
    kind = key.split("/", 1)[0]
    if kind in RECORD_KINDS:
        path = value.get("path")
        if isinstance(path, str):
            return [(path, value.get("filename", path.rsplit("/", 1)[-1]))]
    elif kind == "mirror":
        out = []
        for entry in value.get("files", ()):
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str):
                out.append((path, entry.get("filename", "")))
        return out
    return []
