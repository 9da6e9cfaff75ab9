"""Uploads through the legacy API as twine, ``uv publish`` and devpi-client send them.

The multipart body is parsed in a worker thread with a streaming parser: the ``content``
part goes straight into a temp blob while it is hashed, so a big upload is never held in
memory and never blocks the reactor. Everything is checked (permission first, then file
name, digests, metadata read from the archive itself) before one write transaction records
the file; a refused upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs

from multipart import MultipartSegment, PushMultipartParser, parse_options_header
from twisted.internet.defer import FirstError, gatherResults
from twisted.python.failure import Failure

from devpid.domain import keys, paths
from devpid.domain.permissions import can_upload_to
from devpid.model.metadata import (
    MetadataError,
    check_release_size,
    metadata_from_form,
    read_core_metadata,
)
from devpid.model.names import (
    InvalidFilename,
    check_safe_filename,
    filename_matches,
    normalize_name,
    parse_dist_filename,
    validate_project_name,
    validate_version,
)
from devpid.store.base import BlobStore, Store, WriteFailed, is_out_of_space, write_failed
from devpid.store.sqlite import encode_value
from devpid.web import toxresults
from devpid.web.app import (
    DevpidServer,
    header,
    log_when,
    overwrite_log,
    report_write_failure,
    set_serial,
    utc_timestamp,
)
from devpid.web.errors import HTTPError, forbidden, submit_error, unauthorized

# Form fields other than the file, one and all together: bounds what a parse holds in
# memory (metadata fields are bounded further, see model.metadata.check_release_size).
MAX_FIELD_BYTES = 2 * 1024 * 1024
MAX_FORM_BYTES = 8 * 1024 * 1024
MAX_DOC_MEMBERS = 20000
MAX_DOC_UNPACKED = 512 * 1024 * 1024


@dataclass
class UploadedFile:
    filename: str
    tmp: Path
    sha256: str
    md5: str
    blake2_256: str
    size: int


@dataclass
class ParsedUpload:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: UploadedFile | None = None
    # Core metadata read in the same worker-thread trip as the parse (see parse_and_read);
    # an HTTPError from reading it is kept and raised where the checks want it.
    metadata: tuple[dict[str, Any] | None, bytes | None] | HTTPError | None = None

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


def parse_upload_body(stream: BinaryIO, boundary: str, blobs: BlobStore) -> ParsedUpload:
    """Parse a multipart body; the file part streams into a temp blob. Blocking (thread)."""
    result = ParsedUpload()
    stream.seek(0)
    segment: MultipartSegment | None = None
    buf = bytearray()
    out: BinaryIO | None = None
    tmp: Path | None = None
    hashers: list[Any] = []
    size = 0
    form_bytes = 0
    try:
        with PushMultipartParser(boundary, max_segment_count=1000) as parser:
            while not parser.closed:
                chunk = stream.read(256 * 1024)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment = event
                        buf = bytearray()
                        if event.name == "content" and event.filename:
                            if out is not None:
                                raise HTTPError(400, "more than one content file field")
                            out, tmp = blobs.new_temp()
                            hashers = [
                                hashlib.sha256(),
                                hashlib.md5(usedforsecurity=False),
                                hashlib.blake2b(digest_size=32),
                            ]
                            size = 0
                    elif event:
                        if segment is not None and out is not None and segment.name == "content" \
                                and segment.filename:
                            out.write(event)
                            for h in hashers:
                                h.update(event)
                            size += len(event)
                        else:
                            buf += event
                            form_bytes += len(event)
                            if len(buf) > MAX_FIELD_BYTES:
                                raise HTTPError(
                                    400, f"form field {segment.name if segment else ''!r} "
                                    f"is larger than {MAX_FIELD_BYTES} bytes")
                            if form_bytes > MAX_FORM_BYTES:
                                raise HTTPError(400, f"form fields are larger than "
                                                f"{MAX_FORM_BYTES} bytes in total")
                    else:
                        if segment is None:
                            continue
                        if segment.name == "content" and segment.filename and out is not None:
                            assert tmp is not None
                            out.flush()
                            result.file = UploadedFile(
                                filename=segment.filename,
                                tmp=tmp,
                                sha256=hashers[0].hexdigest(),
                                md5=hashers[1].hexdigest(),
                                blake2_256=hashers[2].hexdigest(),
                                size=size,
                            )
                        elif segment.name:
                            text = bytes(buf).decode("utf-8", errors="replace")
                            result.fields.setdefault(segment.name, []).append(text)
                        segment = None
                if not chunk:
                    break
    except HTTPError:
        _cleanup(out, tmp, blobs)
        raise
    except ValueError as e:  # the parser's errors (MultipartError): the client's fault
        _cleanup(out, tmp, blobs)
        raise HTTPError(400, f"malformed multipart body: {e}") from None
    except BaseException as e:  # ours: a full disk says so (507), anything else is a 500
        _cleanup(out, tmp, blobs)
        if is_out_of_space(e):
            raise write_failed("receiving the upload", e) from e
        raise
    if out is not None:
        out.close()
    if result.file is None and tmp is not None:
        blobs.discard(tmp)
    return result


def _cleanup(out: BinaryIO | None, tmp: Path | None, blobs: BlobStore) -> None:
    """Remove the temp file at once (its close may fail too on a full disk)."""
    try:
        if out is not None:
            out.close()
    except OSError:
        pass
    finally:
        if tmp is not None:
            blobs.discard(tmp)


def parse_and_read(stream: BinaryIO, boundary: str, blobs: BlobStore) -> ParsedUpload:
    """Parse the body and, for a file upload, read its core metadata: one thread trip."""
    parsed = parse_upload_body(stream, boundary, blobs)
    action = parsed.get(":action")
    if parsed.file is not None and action == "file_upload":
        try:
            check_safe_filename(parsed.file.filename)
            parsed.metadata = read_file_metadata(parsed.file, parsed.file.filename)
        except HTTPError as e:
            parsed.metadata = e
        except (InvalidFilename, ValueError):
            parsed.metadata = None  # the ordinary checks report it
    if action in ("file_upload", "submit", "register"):
        read = parsed.metadata
        archive = read[0] if isinstance(read, tuple) and read[0] is not None else {}
        try:
            check_release_size({**metadata_from_form(parsed.fields), **archive})
        except MetadataError as e:
            if parsed.file is not None:
                blobs.discard(parsed.file.tmp)
            raise HTTPError(400, f"invalid metadata: {e}") from None
    return parsed


def read_file_metadata(
    upload: UploadedFile, filename: str
) -> tuple[dict[str, Any] | None, bytes | None]:
    """Core metadata read from the archive itself. Blocking (thread).

    Returns (metadata fields or None, raw METADATA of a wheel for PEP 658 or None).
    """
    kind = parse_dist_filename(filename).kind
    if kind not in ("wheel", "sdist"):
        return None, None
    try:
        meta = read_core_metadata(upload.tmp, filename)
    except MetadataError as e:
        if kind == "wheel":
            raise HTTPError(400, f"invalid distribution: {e}") from None
        return None, None
    return dict(meta.fields), (meta.raw if kind == "wheel" else None)


async def store_file_blobs(
    server: DevpidServer, upload: UploadedFile, raw_metadata: bytes | None
) -> str | None:
    """Commit the upload (and its PEP 658 metadata) to the blob store, once it was accepted.

    The two blobs are written by two worker threads at once: each costs a file and a
    directory fsync, which dominate an upload's time. Returns the metadata blob's sha256.
    """
    work = [server.in_thread(server.blobs.commit_temp, upload.tmp, upload.sha256)]
    if raw_metadata is not None:
        work.append(server.in_thread(server.blobs.put_bytes, raw_metadata))
    try:
        results = await gatherResults(work, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
    return results[1] if raw_metadata is not None else None


def check_doc_zip(path: Path) -> None:
    """Docs are served from the zip, never unpacked; still refuse hostile archives."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_DOC_MEMBERS:
                raise HTTPError(400, f"doc zip has more than {MAX_DOC_MEMBERS} members")
            total = 0
            for info in infos:
                name = info.filename
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    raise HTTPError(400, f"doc zip member {name!r} escapes the docs directory")
                total += info.file_size
            if total > MAX_DOC_UNPACKED:
                raise HTTPError(400, "doc zip unpacks to more than the allowed size")
    except zipfile.BadZipFile:
        raise HTTPError(400, "doc upload is not a valid zip file") from None


FORM_URLENCODED = "application/x-www-form-urlencoded"


def parse_urlencoded(stream: BinaryIO) -> ParsedUpload:
    """A urlencoded form (``:action=submit`` as some clients register): fields only."""
    stream.seek(0)
    body = stream.read(MAX_FIELD_BYTES + 1)
    if len(body) > MAX_FIELD_BYTES:
        raise HTTPError(400, "form too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "form is not UTF-8") from None
    return ParsedUpload(fields=parse_qs(text, keep_blank_values=True))


async def handle_post(server: DevpidServer, request: Any, user: str, index: str) -> Any:
    """The INDEX_POST_HOOK for legacy upload forms (``:action`` fields).

    Errors are reported the legacy protocol's way (the message in the status line).
    """
    ctype = header(request, b"content-type") or ""
    mime, options = parse_options_header(ctype)
    if mime not in ("multipart/form-data", FORM_URLENCODED):
        return None
    try:
        return await _handle_form(server, request, user, index, mime, options)
    except HTTPError as e:
        raise submit_error(e) from None
    except WriteFailed:  # the storage's answer, told the same way (twine shows the phrase)
        raise submit_error(report_write_failure(request, Failure())) from None


async def _handle_form(
    server: DevpidServer, request: Any, user: str, index: str, mime: str,
    options: dict[str, str],
) -> Any:
    stage = f"{user}/{index}"
    config = server.index_config(stage)
    if config is None:
        raise HTTPError(404, f"The stage {stage} could not be found.")
    if config.get("type") == "mirror":
        raise HTTPError(404, "cannot submit to mirror index")
    actor = await server.identify(request)
    if not can_upload_to(actor, user, config):
        if actor is None:
            raise unauthorized("authentication required to upload")
        raise forbidden(f"no permission to submit to {stage}")
    if mime == FORM_URLENCODED:
        parsed: ParsedUpload = await server.in_thread(parse_urlencoded, request.content)
    else:
        boundary = options.get("boundary")
        if not boundary:
            raise HTTPError(400, "multipart body without boundary")
        parsed = await server.in_thread(parse_and_read, request.content, boundary, server.blobs)
    try:
        action = parsed.get(":action")
        if action is None:
            raise HTTPError(400, ":action field not found")
        if action in ("file_upload", "doc_upload"):
            if parsed.file is None:
                raise HTTPError(400, "content file field not found")
            ctx = Upload(server, request, stage, config, actor, parsed, parsed.file)
            return await (_file_upload if action == "file_upload" else _doc_upload)(ctx)
        if action in ("submit", "register"):
            return await _register(server, request, stage, parsed)
        raise HTTPError(400, f"action {action!r} not supported")
    finally:
        if parsed.file is not None:
            server.blobs.discard(parsed.file.tmp)


def _name_version(parsed: ParsedUpload) -> tuple[str, str]:
    name = parsed.get("name")
    version = parsed.get("version")
    if not name or not version:
        raise HTTPError(400, "name and version fields are required")
    error = validate_project_name(name)
    if error:
        raise HTTPError(400, f"invalid metadata: {error}")
    if any(c in name for c in '<>%#"/\\'):
        raise HTTPError(400, "invalid metadata: name or version contains invalid characters")
    error = validate_version(version)
    if error:
        raise HTTPError(400, f"invalid metadata: {error}")
    return name, version


async def _register(
    server: DevpidServer, request: Any, stage: str, parsed: ParsedUpload
) -> bytes:
    name, version = _name_version(parsed)
    project = normalize_name(name)
    metadata = metadata_from_form(parsed.fields)
    metadata.update(name=name, version=version)
    release_key = keys.release(stage, project, version)
    prepared = await server.in_thread(prepare_release, server.store, release_key, metadata,
                                      False)
    async with server.store.write() as tx:
        _ensure_project(tx, stage, project, name)
        set_release(tx, server.store, release_key, metadata, False, prepared)
    set_serial(request, tx.serial)
    return b""


# A release record is up to MAX_RELEASE_SIZE: merging it with the stored one, comparing and
# encoding happen in a worker thread; the commit on the reactor only writes the text.
Prepared = tuple[dict[str, Any] | None, str | None, int]


def prepare_release(store: Store, key: str, metadata: dict[str, Any], merge: bool) -> Prepared:
    """(new record or None if unchanged, its encoding, serial of the record read). Thread."""
    old, serial = store.read_apart(key)
    new = {**old, **metadata} if merge and isinstance(old, dict) else metadata
    if new == old:
        return None, None, serial
    return new, encode_value(new), serial


def set_release(tx: Any, store: Store, key: str, metadata: dict[str, Any], merge: bool,
                prepared: Prepared) -> None:
    """Commit a prepared record, unless the record changed since: then do it here (rare)."""
    new, text, serial = prepared
    if key in tx.pending or store.serial_of(key) != serial:
        old = tx.get(key)
        tx.set(key, {**old, **metadata} if merge and isinstance(old, dict) else metadata)
    elif new is not None and text is not None:
        tx.set_encoded(key, new, text)


def _ensure_project(tx: Any, stage: str, project: str, name: str) -> None:
    if tx.get(keys.project(stage, project)) is None:
        tx.set(keys.project(stage, project), {"name": name, "created": utc_timestamp()})


@dataclass
class Upload:
    """One accepted-for-checking upload: who sends what to which index."""

    server: DevpidServer
    request: Any
    stage: str
    config: dict[str, Any]
    actor: str | None
    parsed: ParsedUpload
    file: UploadedFile


async def _file_upload(ctx: Upload) -> bytes:
    server, request, stage, config, actor, parsed, upload = (
        ctx.server, ctx.request, ctx.stage, ctx.config, ctx.actor, ctx.parsed, ctx.file)
    name, version = _name_version(parsed)
    filename = upload.filename
    try:
        check_safe_filename(filename)
        dist = parse_dist_filename(filename)
    except InvalidFilename as e:
        raise HTTPError(400, str(e)) from None
    mismatch = filename_matches(filename, name, version)
    if mismatch:
        raise HTTPError(400, mismatch)
    for field_name, actual in (
        ("sha256_digest", upload.sha256),
        ("md5_digest", upload.md5),
        ("blake2_256_digest", upload.blake2_256),
    ):
        claimed = parsed.get(field_name)
        if claimed and claimed.strip().lower() != actual:
            raise HTTPError(400, f"{field_name} does not match the uploaded content")
    if upload.size == 0:
        raise HTTPError(400, "the uploaded file is empty")
    project = normalize_name(name)
    if dist.project != project:
        raise HTTPError(400, f"filename {filename!r} does not match project name {name!r}")
    file_key = keys.file(stage, project, filename)
    existing = server.store.get(file_key)
    volatile = config.get("volatile", True)
    if existing is not None and not volatile:
        if existing.get("sha256") == upload.sha256:
            request.setResponseCode(200, b"Upload of identical file to non volatile index.")
            return b""
        raise HTTPError(409, f"{filename} already exists in non-volatile index")

    read = parsed.metadata
    if isinstance(read, HTTPError):
        raise read
    if read is None:
        read = await server.in_thread(read_file_metadata, upload, filename)
    archive_fields, raw_metadata = read
    form_fields = metadata_from_form(parsed.fields)
    if archive_fields is not None:
        archive_name = str(archive_fields.get("name", ""))
        if archive_name and normalize_name(archive_name) != project:
            raise HTTPError(
                400, f"the file's metadata names project {archive_name!r}, not {name!r}"
            )
        archive_version = str(archive_fields.get("version", ""))
        if archive_version and filename_matches(filename, name, archive_version):
            raise HTTPError(400, f"the file's metadata has version {archive_version!r}")
    metadata = {**form_fields, **(archive_fields or {})}
    metadata.update(name=name, version=version)
    # Only an accepted file reaches the blob store (a refusal above leaves no orphan blob).
    metadata_sha = await store_file_blobs(server, upload, raw_metadata)
    log_entry: dict[str, Any] = {"what": "upload", "who": actor, "when": log_when(),
                                 "dst": stage}

    release_key = keys.release(stage, project, version)
    prepared = await server.in_thread(prepare_release, server.store, release_key, metadata, True)

    # Re-read after the last await; the block below checks it again under the write lock.
    current = server.store.get(file_key)
    if current is not None and not volatile:
        if current.get("sha256") == upload.sha256:
            request.setResponseCode(200, b"Upload of identical file to non volatile index.")
            return b""
        raise HTTPError(409, f"{filename} already exists in non-volatile index")
    log = overwrite_log(current)
    sha = upload.sha256
    value = {
        "filename": filename,
        "path": paths.file_path(stage, sha, filename),
        "sha256": sha,
        "md5": upload.md5,
        "size": upload.size,
        "version": version,
        "upload_time": utc_timestamp(),
        "requires_python": metadata.get("requires_python") or None,
        "yanked": False,
        "metadata_sha256": metadata_sha,
        "log": [*log, log_entry],
    }
    async with server.store.write() as tx:
        if tx.get(file_key) != current:  # the same file, uploaded while this one waited
            raise HTTPError(409, f"{filename} was uploaded concurrently; retry")
        _ensure_project(tx, stage, project, name)
        set_release(tx, server.store, release_key, metadata, True, prepared)
        toxresults.file_changing(tx, stage, project, filename, value)
        tx.set(file_key, value)
    set_serial(request, tx.serial)
    return b""


async def _doc_upload(ctx: Upload) -> bytes:
    server, request, stage, config, actor, parsed, upload = (
        ctx.server, ctx.request, ctx.stage, ctx.config, ctx.actor, ctx.parsed, ctx.file)
    name = parsed.get("name")
    if not name or validate_project_name(name):
        raise HTTPError(400, "doc upload needs a valid name field")
    project = normalize_name(name)
    version = parsed.get("version")
    if not version:
        versions = [keys.last_part(k) for k in server.store.keys(
            keys.release_prefix(stage, project))]
        if not versions:
            raise HTTPError(
                400, f"doczip has no version and '{project}' has no releases to derive one from"
            )
        from devpid.links import version_key

        version = max(versions, key=version_key)
    error = validate_version(version)  # the same rules as for release files
    if error:
        raise HTTPError(400, f"invalid version: {error}")
    if upload.size:  # an empty file (``devpi upload --only-docs`` of one) is empty docs
        await server.in_thread(check_doc_zip, upload.tmp)
    doc_key = keys.doc(stage, project, version)
    existing = server.store.get(doc_key)
    if existing is not None and not config.get("volatile", True):
        if existing.get("sha256") == upload.sha256:
            request.setResponseCode(200, b"Upload of identical file to non volatile index.")
            return b""
        raise HTTPError(409, f"documentation of {project} {version} already exists "
                             "in non-volatile index")
    await server.in_thread(server.blobs.commit_temp, upload.tmp, upload.sha256)
    sha = upload.sha256
    filename = f"{project}-{version}.doc.zip"
    value = {
        "filename": filename,
        "path": paths.file_path(stage, sha, filename),
        "sha256": sha,
        "size": upload.size,
        "version": version,
        "upload_time": utc_timestamp(),
        "log": [{"what": "upload", "who": actor, "when": log_when(), "dst": stage}],
    }
    async with server.store.write() as tx:
        _ensure_project(tx, stage, project, name)
        release_key = keys.release(stage, project, version)
        if tx.get(release_key) is None:
            tx.set(release_key, {"name": name, "version": version})
        tx.set(doc_key, value)
    set_serial(request, tx.serial)
    return b""

