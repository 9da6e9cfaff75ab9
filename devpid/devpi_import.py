"""Reading a devpi-server (6.x) export directory into devpid store entries.

``devpi-export`` writes ``dataindex.json`` (``dumpversion`` "2"; "1" is read too) with
``users``, ``indexes`` (``indexconfig``, ``projects`` -> version -> metadata, ``files``) and
the files beside it at their ``relpath``. This module turns that into exactly the key layout
of ``devpid/domain/keys.py`` and hands back an :class:`~devpid.dump.ImportPlan`, so the devpid
importer verifies and writes it like one of its own dumps.

Every file is hashed and compared with the export's hashes here, before anything is written.
devpi's passwords are argon2 (or salted sha256) hashes that devpid cannot check: such users
are imported without a usable password and listed in a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from devpid.domain import keys, paths
from devpid.dump import DumpError, ImportPlan, Progress
from devpid.model.indexes import (
    DEFAULT_MIRROR_CACHE_EXPIRY,
    MIRROR_DROPPED,
    IndexConfigError,
    allowed_keys,
    new_config,
)
from devpid.model.metadata import MetadataError, read_core_metadata
from devpid.model.names import normalize_name, validate_user_or_index_name
from devpid.store.blobs import hash_file

EPOCH = "1970-01-01T00:00:00Z"
_USER_FIELDS = ("email", "title", "description", "custom_data", "modified")


def _iso(when: Any) -> str | None:
    """devpi log times (``[Y, M, D, h, m, s]``) as PEP 700 upload-time text."""
    if isinstance(when, list | tuple) and len(when) >= 6 and all(isinstance(x, int) for x in when):
        y, mo, d, h, mi, s = when[:6]
        return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.000000Z"
    return None


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _log_time(log: list[Any]) -> str | None:
    for entry in log:
        if isinstance(entry, dict):
            when = _iso(entry.get("when"))
            if when:
                return when
    return None


def _expected_hashes(entrymapping: dict[str, Any]) -> dict[str, str]:
    """The hashes devpi recorded: ``hashes`` plus the older ``hash_spec`` and ``md5``."""
    hashes = dict(entrymapping.get("hashes") or {})
    spec = entrymapping.get("hash_spec")
    if isinstance(spec, str) and "=" in spec:
        algo, _, value = spec.partition("=")
        hashes.setdefault(algo, value)
    if isinstance(entrymapping.get("md5"), str):
        hashes.setdefault("md5", entrymapping["md5"])
    return hashes


def _convert_user(name: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A devpid user value and whether its password hash is usable by devpid (bcrypt)."""
    pwhash = record.get("pwhash")
    usable = isinstance(pwhash, str) and pwhash.startswith("$2") and "pwsalt" not in record
    value: dict[str, Any] = {
        "pwhash": pwhash if usable else "",
        "created": record.get("created") or EPOCH,
    }
    for f in _USER_FIELDS:
        if record.get(f) is not None:
            value[f] = record[f]
    return value, usable


def _convert_index(stage: str, raw: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    owner = stage.split("/")[0]
    index_type = raw.get("type", "stage")
    if index_type not in ("stage", "mirror"):
        raise DumpError(f"index {stage}: unknown index type {index_type!r} (from a plugin?)")
    raw = dict(raw)
    if "pypi_whitelist" in raw:
        raw.setdefault("mirror_whitelist", raw.pop("pypi_whitelist"))
    if not raw.get("uploadtrigger_jenkins"):
        raw.pop("uploadtrigger_jenkins", None)
    allowed = allowed_keys(index_type) | {"type"} | set(MIRROR_DROPPED)
    dropped = sorted(k for k in raw if k not in allowed)
    if dropped:
        warnings.append(f"index {stage}: dropped settings devpid does not know: "
                        + ", ".join(dropped))
    raw = {k: v for k, v in raw.items() if k in allowed and v is not None}
    try:
        return new_config(owner, raw, default_cache_expiry=DEFAULT_MIRROR_CACHE_EXPIRY,
                          normalize=normalize_name)
    except IndexConfigError as e:
        raise DumpError(f"index {stage}: {e}") from None


def _release_value(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if not k.startswith("+")}


def load_devpi_export(dumpdir: Path, stream: TextIO | None = None) -> ImportPlan:
    """Convert and verify a devpi-server export; nothing is written."""
    out = stream if stream is not None else sys.stderr
    try:
        data = json.loads((dumpdir / "dataindex.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DumpError(f"dataindex.json: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise DumpError("dataindex.json: not a JSON object")
    version = str(data.get("dumpversion"))
    if version not in ("1", "2"):
        raise DumpError(f"dataindex.json: incompatible dumpversion: {data.get('dumpversion')!r}")

    plan = ImportPlan(
        source=f"devpi-server {data.get('devpi_server', '?')} export {dumpdir}", entries=[]
    )
    entries: dict[str, Any] = {}
    for name, record in sorted((data.get("users") or {}).items()):
        error = validate_user_or_index_name(name, "user name")
        if error:
            raise DumpError(f"user {name!r}: {error}")
        entries[keys.user(name)], _ = _convert_user(
            name, record if isinstance(record, dict) else {}
        )
    if keys.user("root") not in entries:
        entries[keys.user("root")] = {"pwhash": "", "created": EPOCH}

    indexes: dict[str, dict[str, Any]] = data.get("indexes") or {}
    files_total = sum(
        1 for idx in indexes.values() for f in (idx.get("files") or [])
        if f.get("type") in ("releasefile", "doczip")
    )
    progress = Progress("verified", files_total, "files", out)
    toxresults = 0
    for stage, idx in sorted(indexes.items()):
        if stage.count("/") != 1:
            raise DumpError(f"index {stage!r}: not of the form user/index")
        user, index = stage.split("/")
        for part, kind in ((user, "user name"), (index, "index name")):
            error = validate_user_or_index_name(part, kind)
            if error:
                raise DumpError(f"index {stage}: {error}")
        config = _convert_index(stage, idx.get("indexconfig") or {}, plan.warnings)
        entries[keys.index(user, index)] = config
        is_stage = config["type"] == "stage"

        names: dict[str, str] = {}
        for projectname, versions in (idx.get("projects") or {}).items():
            project = normalize_name(projectname)
            for ver, metadata in (versions or {}).items():
                release = _release_value(metadata or {})
                release.setdefault("name", projectname)
                release.setdefault("version", ver)
                names.setdefault(project, str(release["name"]))
                if is_stage:
                    entries[keys.release(stage, project, ver)] = release
            names.setdefault(project, projectname)

        created: dict[str, str] = {}
        for entry in idx.get("files") or []:
            ftype = entry.get("type")
            if ftype == "toxresult":
                toxresults += 1
                continue
            if ftype not in ("releasefile", "doczip"):
                plan.warnings.append(f"index {stage}: skipped an entry of type {ftype!r}")
                continue
            relpath = str(entry.get("relpath", ""))
            try:
                paths.check_relative(relpath)
            except paths.UnsafePath:
                raise DumpError(f"index {stage}: bad relpath {relpath!r}") from None
            path = dumpdir / relpath
            if not path.is_file():
                raise DumpError(f"{relpath}: missing from the export directory")
            sha, md5, size = hash_file(path)
            mapping = entry.get("entrymapping") or {}
            for algo, expected in _expected_hashes(mapping).items():
                actual = {"sha256": sha, "md5": md5}.get(algo)
                if actual is not None and actual != expected:
                    raise DumpError(
                        f"{relpath}: {algo} mismatch (dataindex.json {expected}, content {actual})"
                    )
            progress.advance()
            projectname = str(entry.get("projectname") or mapping.get("project") or "")
            project = normalize_name(projectname)
            if not project:
                raise DumpError(f"{relpath}: no project name")
            names.setdefault(project, projectname)
            version_ = str(entry.get("version") or mapping.get("version") or "")
            log = entry.get("log") if isinstance(entry.get("log"), list) else []
            when = _log_time(log) or _now()
            if not log:
                log = [{"what": "upload", "who": "<import>", "when": list(time.gmtime()[:6]),
                        "dst": stage}]
            created[project] = min(created.get(project, when), when)
            release_key = keys.release(stage, project, version_)
            if is_stage and version_ and release_key not in entries:
                entries[release_key] = {"name": names[project], "version": version_}
            release = entries.get(release_key) or {}
            plan.blob_files[sha] = path
            if ftype == "doczip":
                filename = f"{project}-{version_}.doc.zip"
                entries[keys.doc(stage, project, version_)] = {
                    "filename": filename,
                    "path": paths.file_path(stage, sha, filename),
                    "sha256": sha,
                    "size": size,
                    "version": version_,
                    "upload_time": when,
                    "log": log,
                }
                continue
            filename = os.path.basename(relpath)
            value: dict[str, Any] = {
                "filename": filename,
                "path": paths.file_path(stage, sha, filename),
                "sha256": sha,
                "md5": md5,
                "size": size,
                "version": version_,
                "upload_time": when,
                "requires_python": release.get("requires_python") or None,
                "yanked": False,
                "log": log,
            }
            if filename.endswith(".whl"):
                try:
                    raw = read_core_metadata(path, filename).raw
                except MetadataError as e:
                    plan.warnings.append(f"{relpath}: no core metadata served ({e})")
                else:
                    meta_sha = hashlib.sha256(raw).hexdigest()
                    plan.blob_bytes[meta_sha] = raw
                    value["metadata_sha256"] = meta_sha
            if isinstance(mapping.get("url"), str):
                value["url"] = mapping["url"]
            entries[keys.file(stage, project, filename)] = value
        if is_stage:
            for project, display in names.items():
                entries[keys.project(stage, project)] = {
                    "name": display, "created": created.get(project, _now()),
                }
    progress.finish()
    if toxresults:
        plan.warnings.append(f"skipped {toxresults} toxresult(s): devpid does not keep them")
    plan.entries = sorted(entries.items())
    return plan
