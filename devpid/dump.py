"""Export and import of a whole server directory as a versioned, self-checking dump.

A dump directory (format ``devpid-dump``, version 1) holds:

``devpid-dump.json``
    ``{"format": "devpid-dump", "version": 1, "exported_at", "source_uuid", "serial",
    "entries": [[key, value], ...]}``: every store key (layout: ``devpid/domain/keys.py``)
    as read in ONE read transaction, so the dump is the state at exactly ``serial``.
``blobs/{h[0:2]}/{h[2:4]}/{h}``
    every blob a ``file/`` or ``doc/`` value references (``sha256``, ``metadata_sha256``).
``audit.jsonl``
    the audit log (devpid/audit.py), one row per line, oldest first; optional (dumps of
    older devpid versions have none and import with an empty log).
``MANIFEST.sha256``
    ``sha256sum`` lines for every other file, so ``sha256sum -c`` works too.

Export reads a live server's database read-only (WAL gives the snapshot, the daemon never
waits; on PostgreSQL one REPEATABLE READ transaction of the database itself, not the node's
view). Import verifies everything (manifest, blobs, JSON, names, index inheritance) BEFORE
writing anything, builds the new server directory beside its final place and renames it
there, so a failed import leaves nothing behind (``--store``: it fills an empty PostgreSQL
database, and drops its tables again on failure). devpi-server export directories
(``dataindex.json``) are converted by :mod:`devpid.devpi_import` and imported the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from devpid import audit, auth
from devpid.model.indexes import IndexConfigError, check_bases
from devpid.model.names import InvalidFilename, check_safe_filename, validate_user_or_index_name
from devpid.store import (
    BlobStore,
    LocalBlobStore,
    blob_root,
    is_initialised,
    is_postgres_url,
    keys,
    open_store,
    remember_store_url,
    store_url,
)
from devpid.store.blobs import HEX64

FORMAT = "devpid-dump"
VERSION = 1
JSON_NAME = "devpid-dump.json"
AUDIT_NAME = "audit.jsonl"
MANIFEST_NAME = "MANIFEST.sha256"
BLOBS_DIR = "blobs"
CHUNK = 1024 * 1024

# key kind -> number of "/"-separated parts
# The kinds of key a dump may carry (tokens are not exported: they are per server).
_DUMP_KINDS = ("user", "index", "project", "release", "file", "doc", "toxresult", "mirror")


class DumpError(Exception):
    """Export or import cannot go on; the message names the file or entry at fault."""


# -- progress ---------------------------------------------------------------------------------
class Progress:
    """A one-line bar on a terminal; elsewhere (logs, CI) a plain line every ~10%/500 items."""

    def __init__(self, verb: str, total: int, unit: str, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.step = max(1, min(500, -(-total // 10)))
        self._last_draw = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                width = 30
                filled = width * self.done // self.total if self.total else width
                bar = "#" * filled + "." * (width - filled)
                self.stream.write(
                    f"\r{self.verb} [{bar}] {self.done}/{self.total} {self.unit}"
                )
                self.stream.flush()
        elif self.done % self.step == 0 or self.done == self.total:
            self.stream.write(f"{self.verb} {self.done}/{self.total} {self.unit}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()


# -- helpers ----------------------------------------------------------------------------------
def blob_relpath(sha256: str) -> str:
    """Where a blob lives inside a dump (the same fan-out as the server's ``+blobs``)."""
    return f"{BLOBS_DIR}/{sha256[0:2]}/{sha256[2:4]}/{sha256}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy a file, returning the sha256 of what was read (one pass over the data)."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sibling_tmpdir(final: Path) -> Path:
    """A new ``FINAL.tmp-PID-XXXX`` directory to build ``final`` in, renamed at the end.

    A run killed with -9 cannot remove its own: such leftovers (a partial copy of every blob)
    are removed here, by the next run for the same target, once their process is gone.
    """
    prefix = f"{final.name}.tmp-"
    for stale in final.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):].split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- export -----------------------------------------------------------------------------------
@contextmanager
def _snapshot(serverdir: Path) -> Iterator[tuple[str, int, Iterable[tuple[str, Any]]]]:
    """(uuid, serial, records) of a (possibly live) server at one serial, the records read
    one at a time where the store can: SQLite's WAL snapshot of the file, without blocking its
    writer; on PostgreSQL the database itself, not this node's view (which may lag)."""
    url = store_url(serverdir)
    if url is not None:
        from devpid.store.postgres import read_database

        uuid, serial, entries = read_database(url)
        yield uuid, serial, entries
        return
    store, _ = open_store(serverdir, readonly=True)
    try:
        with store.read_snapshot() as serial:
            yield store.uuid, serial, store.snapshot()
    finally:
        store.close()


def _write_dump_json(path: Path, uuid: str, serial: int,
                     entries: Iterable[tuple[str, Any]]) -> int:
    """One entry per line: diffable and greppable, still one JSON document. Written as the
    entries come (never all in memory); returns how many there were."""
    head = {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_uuid": uuid,
        "serial": serial,
    }
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, sort_keys=True)[:-1])
        f.write(', "entries": [\n')
        for key, value in entries:
            sep = ",\n" if count else ""
            f.write(sep + json.dumps([key, value], sort_keys=True, separators=(",", ":")))
            count += 1
        f.write("\n]}\n")
        f.flush()
        os.fsync(f.fileno())
    return count


def _write_audit(serverdir: Path, path: Path) -> None:
    """The audit log as JSON lines, read in pages (the log grows without bound)."""
    with open(path, "w", encoding="utf-8") as f:
        if (serverdir / audit.FILENAME).exists():
            conn = audit.connect(serverdir, create=False)
            try:
                after = 0
                while rows := audit.rows_after(conn, after, 5000):
                    f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
                    after = rows[-1]["id"]
            finally:
                conn.close()
        f.flush()
        os.fsync(f.fileno())


@dataclass
class ExportResult:
    target: Path
    serial: int
    entries: int
    blobs: int


def export(
    serverdir: Path,
    target: Path,
    *,
    force: bool = False,
    hard_links: bool = False,
    stream: TextIO | None = None,
) -> ExportResult:
    """Write a dump of ``serverdir`` to ``target`` (atomically: all of it or nothing).

    The store is read one record at a time inside one read transaction: the JSON is written
    while the records stream by, and only the blob digests are kept in memory.
    """
    out = stream if stream is not None else sys.stderr
    if target.exists() and not _is_empty_dir(target) and not force:
        raise DumpError(f"export directory {target} must not exist or be empty (or use --force)")
    if not is_initialised(serverdir):
        raise DumpError(
            f"{serverdir} is not an initialised devpid server directory "
            "(no database there); nothing to export"
        )
    blobs = LocalBlobStore(blob_root(serverdir))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_tmpdir(target)
    try:
        with _snapshot(serverdir) as (uuid, serial, entries):
            if serial < 0:
                raise DumpError(f"{serverdir} holds no data (serial {serial}); "
                                "nothing to export")
            needed: dict[str, str] = {}
            count = _write_dump_json(tmp / JSON_NAME, uuid, serial,
                                     _checked(entries, blobs, needed))
        if not count:
            raise DumpError(f"{serverdir} holds no data (serial {serial}); nothing to export")
        manifest: list[tuple[str, str]] = []
        progress = Progress("exported", len(needed), "files", out)
        for digest, key in sorted(needed.items()):
            rel = blob_relpath(digest)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = blobs.path(digest)
            if hard_links:
                os.link(src, dst)
                actual = sha256_file(dst)
            else:
                actual = _copy_hashing(src, dst)
            if actual != digest:
                raise DumpError(
                    f"{key}: blob {src} is corrupt (its content has sha256 {actual})")
            manifest.append((digest, rel))
            progress.advance()
        progress.finish()
        manifest.append((sha256_file(tmp / JSON_NAME), JSON_NAME))
        _write_audit(serverdir, tmp / AUDIT_NAME)
        manifest.append((sha256_file(tmp / AUDIT_NAME), AUDIT_NAME))
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            f.writelines(f"{digest}  {rel}\n"
                         for digest, rel in sorted(manifest, key=_by_path))
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(target, serial, count, len(needed))


def _checked(entries: Iterable[tuple[str, Any]], blobs: LocalBlobStore,
             needed: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """Pass ``entries`` through, noting each referenced blob in ``needed`` (digest -> key)
    after checking it is a digest that exists."""
    for key, value in entries:
        for digest in keys.record_blobs(key, value):
            if not HEX64.fullmatch(digest):
                raise DumpError(f"{key}: {digest!r} is not a sha256 digest")
            if digest not in needed:
                if not blobs.exists(digest):
                    raise DumpError(f"{key}: its blob {digest} is missing from {blobs.root}")
                needed[digest] = key
        yield key, value


def _by_path(item: tuple[str, str]) -> str:
    return item[1]


# -- import: the plan -------------------------------------------------------------------------
@dataclass
class ImportPlan:
    """Verified-to-be state: store entries plus where each referenced blob comes from."""

    source: str
    entries: list[tuple[str, Any]]
    blob_files: dict[str, Path] = field(default_factory=dict)
    blob_bytes: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    audit_rows: list[audit.Row] = field(default_factory=list)


def _read_manifest(dumpdir: Path) -> dict[str, str]:
    path = dumpdir / MANIFEST_NAME
    if not path.is_file():
        raise DumpError(f"{path}: missing; is {dumpdir} a devpid dump?")
    listed: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        rel = m.group(2) if m else ""
        if m is None or rel.startswith("/") or ".." in rel.split("/"):
            raise DumpError(f"{MANIFEST_NAME} line {lineno}: malformed: {line[:120]!r}")
        listed[rel] = m.group(1)
    return listed


def load_devpid_dump(dumpdir: Path, stream: TextIO | None = None) -> ImportPlan:
    """Read a devpid dump, checking every manifest hash and every referenced blob."""
    out = stream if stream is not None else sys.stderr
    listed = _read_manifest(dumpdir)
    if JSON_NAME not in listed:
        raise DumpError(f"{MANIFEST_NAME}: does not list {JSON_NAME}")
    progress = Progress("verified", len(listed), "files", out)
    for rel, digest in sorted(listed.items()):
        path = dumpdir / rel
        if not path.is_file():
            raise DumpError(f"{rel}: listed in {MANIFEST_NAME} but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise DumpError(f"{rel}: sha256 mismatch (manifest {digest}, content {actual})")
        if rel.startswith(BLOBS_DIR + "/") and rel != blob_relpath(actual):
            raise DumpError(f"{rel}: sha256 mismatch (content {actual})")
        progress.advance()
    progress.finish()

    try:
        doc = json.loads((dumpdir / JSON_NAME).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DumpError(f"{JSON_NAME}: not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DumpError(f"{JSON_NAME}: not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise DumpError(
            f"{JSON_NAME}: dump format version {doc.get('version')!r} is not supported "
            f"(this devpid reads version {VERSION})"
        )
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise DumpError(f"{JSON_NAME}: 'entries' must be a list")
    entries: list[tuple[str, Any]] = []
    for i, item in enumerate(raw_entries):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise DumpError(f"{JSON_NAME}: entry #{i} is not a [key, value] pair")
        entries.append((item[0], item[1]))

    plan = ImportPlan(source=f"devpid dump {dumpdir} (serial {doc.get('serial')})",
                      entries=entries)
    if AUDIT_NAME in listed:
        plan.audit_rows = _read_audit(dumpdir / AUDIT_NAME, str(doc.get("source_uuid") or ""))
    for key, value in entries:
        for digest in keys.record_blobs(key, value):
            if not HEX64.fullmatch(digest):
                raise DumpError(f"{key}: {digest!r} is not a sha256 digest")
            rel = blob_relpath(digest)
            if rel not in listed:
                raise DumpError(f"{key}: its blob {rel} is not in the dump")
            plan.blob_files[digest] = dumpdir / rel
    return plan


def _read_audit(path: Path, source: str) -> list[audit.Row]:
    """The dump's audit rows, checked, as the new server keeps them (origin: the source)."""
    if not source:
        raise DumpError(f"{JSON_NAME}: 'source_uuid' missing (needed for {AUDIT_NAME})")
    rows: list[audit.Row] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DumpError(f"{AUDIT_NAME} line {lineno}: not valid JSON: {e}") from None
            error = audit.check_row(row)
            if error:
                raise DumpError(f"{AUDIT_NAME} line {lineno}: {error}")
            rows.append(audit.carried(row, source))
    return rows


# -- import: structural verification -----------------------------------------------------------
def verify_plan(plan: ImportPlan) -> None:
    """Everything that could make the import fail half-way is checked here, before writing."""
    seen: set[str] = set()
    users: set[str] = set()
    indexes: dict[str, dict[str, Any]] = {}
    for key, value in plan.entries:
        if key in seen:
            raise DumpError(f"{key}: appears twice")
        seen.add(key)
        parts = keys.split(key)
        kind = parts[0]
        if not keys.well_formed(key, _DUMP_KINDS):
            raise DumpError(f"{key}: not a devpid store key")
        if not isinstance(value, dict):
            raise DumpError(f"{key}: value is not a JSON object")
        for i, part in enumerate(parts[1:3], 1):
            error = validate_user_or_index_name(part, "user name" if i == 1 else "index name")
            if error:
                raise DumpError(f"{key}: {error}")
        if kind == "user":
            if not isinstance(value.get("pwhash", ""), str):
                raise DumpError(f"{key}: 'pwhash' must be a string")
            users.add(parts[1])
        elif kind == "index":
            if value.get("type") not in ("stage", "mirror"):
                raise DumpError(f"{key}: unknown index type {value.get('type')!r}")
            indexes[keys.parse(key).stage] = value
        elif kind in keys.RECORD_KINDS:
            for name in ("filename", "path", "sha256"):
                if not isinstance(value.get(name), str):
                    raise DumpError(f"{key}: {name!r} missing")
            if kind in ("file", "toxresult"):
                try:
                    check_safe_filename(parts[4])
                except InvalidFilename as e:
                    raise DumpError(f"{key}: {e}") from None
            for digest in keys.record_blobs(key, value):
                if digest not in plan.blob_files and digest not in plan.blob_bytes:
                    raise DumpError(f"{key}: its blob {digest} is not in the dump")
    if "root" not in users:
        raise DumpError("the dump has no user 'root'")
    for stage, config in sorted(indexes.items()):
        owner = stage.split("/")[0]
        if owner not in users:
            raise DumpError(f"index {stage}: its owner {owner!r} does not exist")
        bases = config.get("bases") or []
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise DumpError(f"index {stage}: 'bases' must be a list of index names")
        try:
            check_bases(stage, bases, indexes.get)
        except IndexConfigError as e:
            raise DumpError(f"index {stage}: {e}") from None
    for key, _ in plan.entries:
        stage = keys.parse(key).stage
        if keys.stage_scoped(key) and stage not in indexes:
            raise DumpError(f"{key}: index {stage} does not exist in the dump")


def unusable_password_users(plan: ImportPlan) -> list[str]:
    """Users whose stored hash devpid cannot check (devpi's argon2, or none at all)."""
    return sorted(
        keys.user_name(key) for key, value in plan.entries
        if key.startswith(keys.USERS) and not str(value.get("pwhash", "")).startswith("$2")
    )


# -- import: writing --------------------------------------------------------------------------
def check_target(serverdir: Path, store: str | None = None) -> None:
    """Importing only ever creates a server directory (and fills only an empty database);
    it never merges into one."""
    if is_initialised(serverdir) or (serverdir.exists() and not _is_empty_dir(serverdir)):
        raise DumpError(
            f"{serverdir} already has data; import needs a new (absent or empty) server "
            "directory"
        )
    if store is not None:
        if not is_postgres_url(store):
            raise DumpError("--store must be a postgresql:// URL")
        from devpid.store.postgres import database_initialised

        if database_initialised(store):
            raise DumpError("the --store database already holds a devpid store; import "
                            "needs an empty database")


def _place_blob(blobs: BlobStore, digest: str, plan: ImportPlan, hard_links: bool) -> None:
    if blobs.exists(digest):
        return
    src = plan.blob_files.get(digest)
    if src is None:
        blobs.put_bytes(plan.blob_bytes[digest])
        return
    if hard_links:
        target = blobs.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
            return
        except OSError:
            pass  # another file system: fall back to copying
    f, tmp = blobs.new_temp()
    with f, open(src, "rb") as fin:
        shutil.copyfileobj(fin, f, CHUNK)
    blobs.commit_temp(tmp, digest)


def _group_key(key: str) -> str:
    """(stage, project): what one import serial holds."""
    parts = keys.parse(key)
    return f"{parts.stage}/{parts.project}"


def write_plan(
    plan: ImportPlan,
    serverdir: Path,
    *,
    hard_links: bool = False,
    stream: TextIO | None = None,
    database: str | None = None,
) -> int:
    """Create ``serverdir`` from a verified plan; returns the final serial.

    Serial 0 holds all users and index configs, then each (stage, project) is one serial
    whose blobs are in place before it commits. Built in a sibling temp directory and
    renamed into place at the end. With ``database`` (a URL) the serials go to that (empty)
    PostgreSQL database, whose tables are dropped again if the import fails.
    """
    out = stream if stream is not None else sys.stderr
    check_target(serverdir, database)
    serverdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_tmpdir(serverdir)
    try:
        if database is not None:
            remember_store_url(tmp, database)
        store, blobs = open_store(tmp)
        try:
            head = [(k, v) for k, v in plan.entries if keys.kind(k) in ("user", "index")]
            with store.transaction() as tx:
                for key, value in head:
                    tx.set(key, value)
            groups: dict[str, list[tuple[str, Any]]] = {}
            for key, value in plan.entries:
                if keys.kind(key) not in ("user", "index"):
                    groups.setdefault(_group_key(key), []).append((key, value))
            progress = Progress("imported", len(groups), "projects", out)
            for _, items in sorted(groups.items()):
                for key, value in items:
                    for digest in keys.record_blobs(key, value):
                        _place_blob(blobs, digest, plan, hard_links)
                with store.transaction() as tx:
                    for key, value in items:
                        tx.set(key, value)
                progress.advance()
            progress.finish()
            serial = store.serial
        finally:
            store.close()
        conn = audit.connect(tmp)
        try:
            audit.append(conn, plan.audit_rows)
        finally:
            conn.close()
        shutil.rmtree(tmp / "+blobs" / "tmp", ignore_errors=True)  # LocalBlobStore.tmpdir
        if serverdir.exists():
            serverdir.rmdir()  # empty, as check_target made sure
        os.rename(tmp, serverdir)
        _fsync_dir(serverdir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if database is not None:
            _discard(database)
        raise
    return serial


def _discard(url: str) -> None:
    from devpid.store.base import StoreError
    from devpid.store.postgres import discard_database

    try:
        discard_database(url)
    except StoreError as e:
        print(f"devpid: WARNING: could not empty the database again: {e}", file=sys.stderr)


def is_devpi_export(path: Path) -> bool:
    return (path / "dataindex.json").is_file()


def load_any(dumpdir: Path, stream: TextIO | None = None) -> ImportPlan:
    """A plan from either dump format (devpi-server's is recognised by dataindex.json)."""
    if not dumpdir.is_dir():
        raise DumpError(f"{dumpdir}: no such dump directory")
    if is_devpi_export(dumpdir):
        from devpid.devpi_import import load_devpi_export

        return load_devpi_export(dumpdir, stream)
    return load_devpid_dump(dumpdir, stream)


def set_root_password(plan: ImportPlan, password: str, rounds: int) -> None:
    pwhash = auth.hash_password(password, rounds)
    for i, (key, value) in enumerate(plan.entries):
        if key == keys.user("root"):
            plan.entries[i] = (key, dict(value, pwhash=pwhash))


def import_dump(
    dumpdir: Path,
    serverdir: Path,
    *,
    hard_links: bool = False,
    root_password: str | None = None,
    bcrypt_rounds: int = auth.DEFAULT_BCRYPT_ROUNDS,
    stream: TextIO | None = None,
    database: str | None = None,
) -> tuple[ImportPlan, int]:
    """Verify a dump completely, then create ``serverdir`` (on ``database``) from it."""
    check_target(serverdir, database)
    plan = load_any(dumpdir, stream)
    verify_plan(plan)
    if root_password is not None:
        set_root_password(plan, root_password, bcrypt_rounds)
    serial = write_plan(plan, serverdir, hard_links=hard_links, stream=stream,
                        database=database)
    return plan, serial


def iter_blob_digests(entries: Iterable[tuple[str, Any]]) -> set[str]:
    """Every blob digest referenced by ``entries`` (used by tests and checks)."""
    return {d for k, v in entries for d in keys.record_blobs(k, v)}
