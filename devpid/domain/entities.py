"""The things the server keeps, as values that know their names, store keys and paths.

Each is a small frozen dataclass built from validated, normalised names (``parse`` refuses
names that could escape a key or a path), so code holding one never re-derives a key or a
path by hand. They wrap ``keys`` and ``paths``; plain-string callers use those directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from devpid.domain import keys, paths
from devpid.model.names import (
    normalize_name,
    validate_project_name,
    validate_user_or_index_name,
    validate_version,
)


class InvalidName(ValueError):
    """A user, index, project or version name that may not become a key or a path."""


@dataclass(frozen=True)
class User:
    name: str

    @classmethod
    def parse(cls, name: str) -> User:
        error = validate_user_or_index_name(name, "user name")
        if error:
            raise InvalidName(error)
        return cls(name)

    @property
    def key(self) -> str:
        return keys.user(self.name)

    @property
    def indexes_prefix(self) -> str:
        return keys.index_prefix(self.name)

    @property
    def tokens_prefix(self) -> str:
        return keys.token_prefix(self.name)


@dataclass(frozen=True)
class Stage:
    """An index, ``user/index``."""

    user: str
    index: str

    @classmethod
    def parse(cls, name: str) -> Stage:
        """From ``user/index``, both parts validated."""
        user, sep, index = name.partition("/")
        if not sep:
            raise InvalidName(f"stage {name!r} is not user/index")
        for part, kind in ((user, "user name"), (index, "index name")):
            error = validate_user_or_index_name(part, kind)
            if error:
                raise InvalidName(error)
        return cls(user, index)

    @classmethod
    def from_key(cls, key: str) -> Stage:
        """The stage an ``index/`` key configures."""
        return cls.parse(keys.stage_name(key))

    @property
    def name(self) -> str:
        return f"{self.user}/{self.index}"

    @property
    def key(self) -> str:
        return keys.index(self.user, self.index)

    @property
    def owner(self) -> User:
        return User(self.user)

    def project(self, name: str) -> Project:
        return Project.parse(self, name)


@dataclass(frozen=True)
class Project:
    """A project of one stage; ``name`` is the PEP 503 normalised name."""

    stage: Stage
    name: str

    @classmethod
    def parse(cls, stage: Stage, name: str) -> Project:
        error = validate_project_name(name)
        if error:
            raise InvalidName(error)
        return cls(stage, normalize_name(name))

    @property
    def key(self) -> str:
        """The private project record (uploads create it)."""
        return keys.project(self.stage.name, self.name)

    @property
    def mirror_key(self) -> str:
        """The cached upstream page (mirror indexes)."""
        return keys.mirror_page(self.stage.name, self.name)

    @property
    def releases_prefix(self) -> str:
        return keys.release_prefix(self.stage.name, self.name)

    @property
    def files_prefix(self) -> str:
        return keys.file_prefix(self.stage.name, self.name)

    @property
    def docs_prefix(self) -> str:
        return keys.doc_prefix(self.stage.name, self.name)

    @property
    def toxresults_prefix(self) -> str:
        return keys.toxresults_of_project(self.stage.name, self.name)

    @property
    def url(self) -> str:
        return paths.project_url(self.stage.name, self.name)

    def release(self, version: str) -> Release:
        error = validate_version(version)
        if error:
            raise InvalidName(error)
        return Release(self, version)

    def file(self, filename: str, sha256: str) -> File:
        paths.check_segment(filename, "filename")
        return File(self, filename, sha256)


@dataclass(frozen=True)
class Release:
    project: Project
    version: str

    @property
    def key(self) -> str:
        return keys.release(self.project.stage.name, self.project.name, self.version)

    @property
    def url(self) -> str:
        return paths.release_url(self.project.stage.name, self.project.name, self.version)

    @property
    def docs_url(self) -> str:
        return paths.docs_url(self.project.stage.name, self.project.name, self.version)

    def doc(self, filename: str, sha256: str) -> Doc:
        paths.check_segment(filename, "filename")
        return Doc(self, filename, sha256)


@dataclass(frozen=True)
class File:
    """A distribution file (an upload, or a mirror file once cached)."""

    project: Project
    filename: str
    sha256: str

    @property
    def key(self) -> str:
        return keys.file(self.project.stage.name, self.project.name, self.filename)

    @property
    def path(self) -> str:
        return paths.file_path(self.project.stage.name, self.sha256, self.filename)

    @property
    def toxresults_prefix(self) -> str:
        return keys.toxresult_prefix(self.project.stage.name, self.project.name,
                                     self.filename)

    def toxresult(self, n: int, filename: str) -> ToxResult:
        return ToxResult(self, n, paths.check_segment(filename, "filename"))


@dataclass(frozen=True)
class Doc:
    """A release's docs zip."""

    release: Release
    filename: str
    sha256: str

    @property
    def key(self) -> str:
        project = self.release.project
        return keys.doc(project.stage.name, project.name, self.release.version)

    @property
    def path(self) -> str:
        return paths.file_path(self.release.project.stage.name, self.sha256, self.filename)


@dataclass(frozen=True)
class ToxResult:
    """Test report number ``n`` of a stored file, served next to it."""

    file: File
    n: int
    filename: str

    @property
    def key(self) -> str:
        f = self.file
        return keys.toxresult(f.project.stage.name, f.project.name, f.filename, self.n)

    @property
    def path(self) -> str:
        return paths.beside(self.file.path, self.filename)
