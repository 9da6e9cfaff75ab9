"""Test results attached to release files (``devpi test`` posts tox's JSON report).

``POST /{user}/{index}/+f/{path of a release file}`` with the report as the body stores it as
a blob next to the file (``{file}.toxresult-{YYYYmmddHHMMSS}-{n}``), lists it in the version's
JSON as a link of rel ``toxresult`` whose ``for_href`` names the file (what ``devpi list -t``
reads), copies it on push and deletes it with the file. Who may post is the index's
``acl_toxresult_upload`` (devpi's default: anyone); mirrors take none (anonymous writes into
``root/pypi`` would be a way to fill the disk).
"""

from __future__ import annotations

import json
import time
from typing import Any

from devpid.domain import paths
from devpid.domain.permissions import can_upload_toxresult
from devpid.store import BlobStore, keys
from devpid.web.app import (
    DevpidServer,
    app,
    json_response,
    log_when,
    reject_constant,
    set_serial,
    utc_timestamp,
)
from devpid.web.errors import HTTPError, not_found

MAX_TOXRESULT_BYTES = 16 * 1024 * 1024  # a tox report is kilobytes; 16 MB is generous
# Per release file (anyone may post by default): the count and the sum of sizes.
MAX_TOXRESULTS_PER_FILE = 100
MAX_TOXRESULTS_BYTES_PER_FILE = 64 * 1024 * 1024


@app.route("/<user>/<index>/+f/<path:rest>", methods=["POST"])
async def post_toxresult(
    server: DevpidServer, request: Any, user: str, index: str, rest: str
) -> bytes:
    stage = f"{user}/{index}"
    config = server.index_config(stage)
    if config is None:
        raise not_found(f"The stage {stage} could not be found.")
    if config.get("type") == "mirror":
        raise HTTPError(
            403,
            f"{stage} is a mirror: tox results are kept for uploaded files only. "
            "You can use the devpi test --no-upload option to skip the upload.",
        )
    actor = await server.identify(request)
    if not can_upload_toxresult(actor, user, config):
        raise HTTPError(
            403,
            "No permission to upload tox results. "
            "You can use the devpi test --no-upload option to skip the upload.",
        )
    try:
        relpath = paths.in_area(stage, paths.FILES_AREA, rest)
    except paths.UnsafePath as e:
        raise not_found(f"no release file found at {e.path}") from None
    found = server.store.lookup_path(relpath)
    if found is None or not found[0].startswith(keys.FILES):
        raise not_found(f"no release file found at {relpath}")
    file_key = found[0]
    _, _, project, filename = keys.parse(file_key)
    # Reading, parsing and storing up to 16 MB is no work for the reactor thread.
    sha, size = await server.in_thread(_store_report, server.blobs, request.content)
    async with server.store.write() as tx:
        release = tx.get(file_key)
        if not isinstance(release, dict):  # deleted while the report was being stored
            raise not_found(f"no release file found at {relpath}")
        prefix = keys.toxresult_prefix(stage, project, filename)
        _check_room(tx.items(prefix), size, filename)
        n = _next_number(tx, prefix)
        name = f"{filename}.toxresult-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{n}"
        path = paths.beside(release["path"], name)
        tx.set(keys.toxresult(stage, project, filename, n), {
            "filename": name,
            "path": path,
            "sha256": sha,
            "size": size,
            "for": filename,
            "version": release.get("version"),
            "upload_time": utc_timestamp(),
            "log": [{"what": "upload", "who": actor, "when": log_when(), "dst": stage}],
        })
    set_serial(request, tx.serial)
    return json_response(request, result=f"{path}#sha256={sha}", type="toxresultpath")


def _check_room(existing: list[tuple[str, Any]], size: int, filename: str) -> None:
    """Refuse a report beyond the per-file bounds (the stored ones are left as they are)."""
    total = size + sum(v.get("size") or 0 for _, v in existing if isinstance(v, dict))
    if len(existing) >= MAX_TOXRESULTS_PER_FILE:
        raise HTTPError(409, f"{filename} already has {len(existing)} tox results, the most "
                             f"a file may have")
    if total > MAX_TOXRESULTS_BYTES_PER_FILE:
        raise HTTPError(409, f"the tox results of {filename} would exceed "
                             f"{MAX_TOXRESULTS_BYTES_PER_FILE} bytes in total")


def _store_report(blobs: BlobStore, content: Any) -> tuple[str, int]:
    """Check the posted report (a JSON object, not too big) and store it. Blocking."""
    content.seek(0)
    body = content.read(MAX_TOXRESULT_BYTES + 1)
    if len(body) > MAX_TOXRESULT_BYTES:
        raise HTTPError(413, f"a tox result may have at most {MAX_TOXRESULT_BYTES} bytes")
    try:
        report = json.loads(body, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "Bad request: could not decode json (strict JSON: no NaN or "
                             "Infinity)") from None
    if not isinstance(report, dict):
        raise HTTPError(400, "a tox result must be a JSON object")
    return blobs.put_bytes(body), len(body)


def file_changing(
    tx: Any, stage: str, project: str, filename: str, new: dict[str, Any] | None
) -> None:
    """Call before a release file's record is deleted (``new`` None) or set to ``new``.

    Reports belong to the bytes they tested: a file that goes, or is replaced by other bytes
    (a re-upload or re-push to a volatile index), takes its reports with it in the same
    serial; a record rewritten with the same bytes (yank, log) keeps them.
    """
    old = tx.get(keys.file(stage, project, filename))
    if new is not None and isinstance(old, dict) and old.get("sha256") == new.get("sha256"):
        return
    for key in tx.keys(keys.toxresult_prefix(stage, project, filename)):
        tx.delete(key)


def copy_for_push(tx: Any, src: str, dst: str, project: str, filename: str, dst_dir: str,
                  push_log: dict[str, Any]) -> list[str]:
    """Push copies a file's results with it (once); returns the new paths (for the log)."""
    copied = []
    target = keys.toxresult_prefix(dst, project, filename)
    present = {v.get("filename") for _, v in tx.items(target)}
    room = tx.items(target)
    for _key, value in tx.items(keys.toxresult_prefix(src, project, filename)):
        if value["filename"] in present:  # pushed before: one record per served path
            continue
        try:
            _check_room(room, value.get("size") or 0, filename)
        except HTTPError:
            break  # the target keeps its own; the push copies what fits
        room.append((_key, value))
        path = paths.in_dir(dst_dir, value["filename"])
        tx.set(f"{target}{_next_number(tx, target)}", {
            **value, "path": path, "log": [*value.get("log", []), push_log],
        })
        copied.append(path)
    return copied


def _next_number(tx: Any, prefix: str) -> int:
    """The first unused N under ``prefix`` (numbers are never reused while a key holds them)."""
    n = len(tx.keys(prefix))
    while tx.get(f"{prefix}{n}") is not None:
        n += 1
    return n
