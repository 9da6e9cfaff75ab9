"""The logical key layout: the one place that knows how state is named in the store.

Nothing outside ``devpid/domain`` spells a key (``tests/test_domain_boundary.py`` checks):
handlers, replication, export/import and the mirror build and take keys apart here, so a
change of layout is one change.

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
``token/{u}/{id}``               an API token of user ``u`` (devpid/tokens.py)
=============================== ==========================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

# The kinds, as prefixes: what prefix scans, commit listeners and exports ask for.
USERS = "user/"
INDEXES = "index/"
PROJECTS = "project/"
RELEASES = "release/"
FILES = "file/"
DOCS = "doc/"
TOXRESULTS = "toxresult/"
MIRRORS = "mirror/"
TOKENS = "token/"


def kind(key: str) -> str:
    """``"file"`` for ``file/...``: what a key is about."""
    return key.split("/", 1)[0]


def user(u: str) -> str:
    return f"{USERS}{u}"


def user_name(key: str) -> str:
    """The user a ``user/{u}`` key names."""
    return key[len(USERS):]


def index(u: str, i: str) -> str:
    return f"{INDEXES}{u}/{i}"


def index_of_stage(stage: str) -> str:
    """``index/{stage}`` for a ``user/index`` stage name."""
    return f"{INDEXES}{stage}"


def index_prefix(u: str | None = None) -> str:
    """All indexes, or those of user ``u``."""
    return INDEXES if u is None else f"{INDEXES}{u}/"


def stage_name(key: str) -> str:
    """The ``user/index`` stage an ``index/`` key configures."""
    return key[len(INDEXES):]


# The kinds of key that belong to a user's indexes (what deleting a user or index removes).
STAGE_KINDS = ("index", "project", "release", "file", "doc", "toxresult", "mirror")


def stage_prefixes(tail: str) -> list[str]:
    """Every stage kind's prefix for ``tail`` = ``"{u}/"`` (all of a user's indexes) or
    ``"{stage}/"`` (one index)."""
    return [f"{k}/{tail}" for k in STAGE_KINDS]


def project_prefix(stage: str | None = None) -> str:
    """Every private project record, or those of one stage."""
    return PROJECTS if stage is None else f"{PROJECTS}{stage}/"


def doc_prefix(stage: str, p: str) -> str:
    return f"{DOCS}{stage}/{p}/"


def toxresults_of_project(stage: str, p: str) -> str:
    """The test reports of all of one project's files."""
    return f"{TOXRESULTS}{stage}/{p}/"


def toxresult(stage: str, p: str, filename: str, n: int) -> str:
    return f"{toxresult_prefix(stage, p, filename)}{n}"


def of_project(stage: str, p: str) -> list[str]:
    """The prefixes of everything kept per project version (not the project or mirror
    record): what deleting a project removes along with those two."""
    return [release_prefix(stage, p), file_prefix(stage, p), doc_prefix(stage, p),
            toxresults_of_project(stage, p)]


def files_of_stage(stage: str | None = None) -> str:
    """Every stored file, or those of one stage."""
    return FILES if stage is None else f"{FILES}{stage}/"


def mirror_prefix(stage: str | None = None) -> str:
    """Every cached mirror page, or those of one mirror index."""
    return MIRRORS if stage is None else f"{MIRRORS}{stage}/"


def token(u: str, token_id: str) -> str:
    return f"{TOKENS}{u}/{token_id}"


def token_prefix(u: str) -> str:
    return f"{TOKENS}{u}/"


class Parts(NamedTuple):
    """A key taken apart: ``file/alice/dev/foo/foo-1.tar.gz`` is
    ``Parts("file", "alice/dev", "foo", "foo-1.tar.gz")``. ``stage``, ``project`` and ``rest``
    are "" where the kind has none (``user/``, ``index/`` keys have no project)."""

    kind: str
    stage: str
    project: str
    rest: str


def parse(key: str) -> Parts:
    """The parts of a stage-scoped key (index, project, release, file, doc, toxresult,
    mirror); ``user/`` and ``token/`` keys put the user name in ``stage``."""
    head, _, tail = key.partition("/")
    if head in ("user", "token"):
        u, _, rest = tail.partition("/")
        return Parts(head, u, "", rest)
    bits = tail.split("/", 3)
    stage = "/".join(bits[:2])
    project = bits[2] if len(bits) > 2 else ""
    rest = bits[3] if len(bits) > 3 else ""
    return Parts(head, stage, project, rest)


# How many ``/``-separated parts each kind of key has (what an import checks keys against).
SHAPES = {"user": 2, "index": 3, "project": 4, "release": 5, "file": 5, "doc": 5,
          "toxresult": 6, "mirror": 4, "token": 3}


def well_formed(key: str, kinds: tuple[str, ...] | None = None) -> bool:
    """Whether ``key`` has the shape of its kind (one of ``kinds``), with no empty part."""
    parts = key.split("/")
    if kinds is not None and parts[0] not in kinds:
        return False
    return SHAPES.get(parts[0]) == len(parts) and all(parts)


def stage_scoped(key: str) -> bool:
    """Whether the key belongs to one stage (not a ``user/`` or ``token/`` key)."""
    return kind(key) not in ("user", "token", "index")


def last_part(key: str) -> str:
    """The last segment: the version of a release or doc key, the index of an index key."""
    return key.rsplit("/", 1)[-1]


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
    if kind(key) not in RECORD_KINDS or not isinstance(value, dict):
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
    what = kind(key)
    if what in RECORD_KINDS:
        path = value.get("path")
        if isinstance(path, str):
            return [(path, value.get("filename", path.rsplit("/", 1)[-1]))]
    elif what == "mirror":
        out = []
        for entry in value.get("files", ()):
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str):
                out.append((path, entry.get("filename", "")))
        return out
    return []
