"""Content-addressed file storage: ``+blobs/ab/cd/abcd...`` named by sha256.

A blob is written to a temp file in ``+blobs/tmp``, fsynced, then renamed into place, and the
store references it only after that: a crash leaves at most an orphan temp file, never a
half-written blob under its final name. Identical content is stored once. Nothing from a URL or
an upload's file name ever becomes part of a path here: only hex digests do.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from devpid.store.base import disk_full_as_out_of_space

HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024


class LocalBlobStore:
    """The ``BlobStore`` (devpid.store.base) of a server directory: files under ``root``
    (``<serverdir>/+blobs``), possibly a directory shared by the nodes of one database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmpdir = root / "tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def relpath(sha256: str) -> str:
        """The path below ``root`` (also what nginx's X-Accel-Redirect location appends)."""
        if not HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{sha256[0:2]}/{sha256[2:4]}/{sha256}"

    def path(self, sha256: str) -> Path:
        return self.root / self.relpath(sha256)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def info(self, sha256: str) -> tuple[int, float] | None:
        """(size, modification time) of a stored blob; None if it is not stored."""
        try:
            st = self.path(sha256).stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def stored(self) -> Iterator[str]:
        """The digest of every blob file (``ab/cd/abcd...``; temp and origins skipped)."""
        return stored_digests(self.root)

    def reuse(self, sha256: str) -> bool:
        """Whether the blob is stored, refreshing its time if so. Blocking (one utime).

        For a writer about to reference an existing blob instead of writing it again: the
        fresh time keeps ``devpid gc`` from sweeping it before that reference is committed.
        """
        try:
            os.utime(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """An open temp file in the blob area (same filesystem, so rename is atomic)."""
        with disk_full_as_out_of_space("creating a temp file"):
            fd, name = tempfile.mkstemp(dir=self.tmpdir, prefix="in-")
        return os.fdopen(fd, "w+b"), Path(name)

    def commit_temp(self, tmp: Path, sha256: str) -> Path:
        """fsync and rename a fully written temp file into place under its digest.

        Blocking: call from a worker thread for big files. A full disk raises OutOfSpace
        (the caller still owns, and discards, ``tmp``).
        """
        target = self.path(sha256)
        with disk_full_as_out_of_space("storing a file"):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            dirfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        return target

    def discard(self, tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> str:
        """Store small content (metadata files, docs); returns its sha256. Blocking."""
        digest = hashlib.sha256(data).hexdigest()
        if self.reuse(digest):
            return digest
        f, tmp = self.new_temp()
        try:
            with disk_full_as_out_of_space("writing a file"), f:
                f.write(data)
            self.commit_temp(tmp, digest)
        finally:
            self.discard(tmp)  # gone already after a commit; removed at once after a failure
        return digest

    def hash_file(self, path: Path) -> tuple[str, str, int]:
        return hash_file(path)

    # -- provenance of mirror downloads ----------------------------------------------------
    # A blob is content-addressed, so any index may hold the bytes a mirror page names by
    # sha256 (a private upload, say). A mirror serves or keeps a blob under a digest its page
    # declares only if it fetched those bytes from its own upstream: an empty marker file
    # ``origins/<h(stage)>/<sha[:2]>/<sha>`` records that (outside the ``ab/cd`` tree).

    def _origin_path(self, origin: str, sha256: str) -> Path:
        self.relpath(sha256)  # validates the digest
        tag = hashlib.sha256(origin.encode()).hexdigest()[:32]
        return self.root / "origins" / tag / sha256[:2] / sha256

    def mark_fetched(self, origin: str, sha256: str) -> None:
        """Record that ``origin`` (a mirror's stage) fetched this blob upstream. Blocking."""
        path = self._origin_path(origin, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def unmark_fetched(self, origin: str, sha256: str) -> None:
        """Forget that ``origin`` fetched this blob (an evicted mirror file). Blocking."""
        self._origin_path(origin, sha256).unlink(missing_ok=True)

    def fetched_by(self, origin: str, sha256: str) -> bool:
        """Whether the blob is stored and ``origin`` fetched it from its own upstream."""
        try:
            return self._origin_path(origin, sha256).is_file() and self.exists(sha256)
        except ValueError:
            return False

    def forget_stale_origins(self) -> int:
        """Remove provenance markers of blobs no longer stored (after a gc sweep). Blocking."""
        removed = 0
        top = self.root / "origins"
        if not top.is_dir():
            return 0
        for marker in top.glob("*/*/*"):
            if HEX64.fullmatch(marker.name) and not self.exists(marker.name):
                marker.unlink(missing_ok=True)
                removed += 1
        return removed

    def clean_temp(self) -> int:
        """Remove temp files left by a crash (called at start-up, before serving)."""
        removed = 0
        for p in self.tmpdir.iterdir():
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
        return removed


def stored_digests(root: Path) -> Iterator[str]:
    """The digest of every blob file under ``root`` (``ab/cd/abcd...``), nothing else."""
    for top in sorted(os.scandir(root), key=lambda e: e.name):
        if len(top.name) != 2 or not top.is_dir(follow_symlinks=False):
            continue
        for mid in sorted(os.scandir(top.path), key=lambda e: e.name):
            if len(mid.name) != 2 or not mid.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(mid.path):
                name = entry.name
                if (HEX64.fullmatch(name) and name.startswith(top.name + mid.name)
                        and entry.is_file(follow_symlinks=False)):
                    yield name


def hash_file(path: Path) -> tuple[str, str, int]:
    """(sha256, md5, size) of a file. Blocking."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size
