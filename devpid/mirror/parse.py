"""Parsing of upstream "simple" index pages (PEP 503 HTML and PEP 691 JSON).

Pure functions without Twisted, so the rules about what we accept from an upstream can be
tested without a network and reused by tools. Anything an upstream sends is untrusted: only
http(s) links to distribution files of the requested project survive parsing.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

__all__ = [
    "DIST_EXTENSIONS",
    "HTML_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "ParseError",
    "UpstreamFile",
    "is_project_file",
    "parse_project_list",
    "parse_project_page",
]

JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"

# Distribution files a mirror serves; other links on a project page are ignored.
DIST_EXTENSIONS: tuple[str, ...] = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".egg")

_NORMALIZE_RE = re.compile(r"[-_.]+")
_HASH_VALUE_RE = re.compile(r"^[0-9a-fA-F]+$")
_VERSION_START_RE = re.compile(r"^[vV]?[0-9]")
_TITLE_RE = re.compile(r"^\s*Links for\s+(.+?)\s*$", re.IGNORECASE)
# Anchor texts of a project list page; html.parser is ~10x slower on 780k anchors.
_LIST_ANCHOR_RE = re.compile(r"<a\b[^>]*>([^<]*)</a\s*>", re.IGNORECASE)
_HASH_ALGORITHMS = frozenset(hashlib.algorithms_guaranteed)


class ParseError(ValueError):
    """An upstream response that is not a simple-index page we understand."""


def _normalize(name: str) -> str:
    """PEP 503 normalization (private copy so parsing has no dependency on the model)."""
    return _NORMALIZE_RE.sub("-", name).lower()


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """One distribution file as an upstream project page describes it."""

    filename: str
    url: str  # absolute, without fragment
    hashes: dict[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    yanked: bool | str = False  # False, True, or the reason
    core_metadata: dict[str, str] | bool = False  # PEP 658/714: False, True or hashes
    size: int | None = None
    upload_time: str | None = None  # ISO 8601, as given by the upstream

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, so the server can store files in its database."""
        return {
            "filename": self.filename,
            "url": self.url,
            "hashes": dict(self.hashes),
            "requires_python": self.requires_python,
            "yanked": self.yanked,
            "core_metadata": (
                dict(self.core_metadata)
                if isinstance(self.core_metadata, dict)
                else self.core_metadata
            ),
            "size": self.size,
            "upload_time": self.upload_time,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpstreamFile:
        """Inverse of to_json (tolerates missing optional keys from older records)."""
        core = data.get("core_metadata", False)
        return cls(
            filename=data["filename"],
            url=data["url"],
            hashes=dict(data.get("hashes") or {}),
            requires_python=data.get("requires_python"),
            yanked=data.get("yanked", False),
            core_metadata=dict(core) if isinstance(core, dict) else bool(core),
            size=data.get("size"),
            upload_time=data.get("upload_time"),
        )


# -- file name checks ---------------------------------------------------------------------------


def _split_extension(filename: str) -> tuple[str, str] | None:
    lower = filename.lower()
    for ext in DIST_EXTENSIONS:
        if lower.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)], ext
    return None


def _is_safe_filename(filename: str) -> bool:
    """Reject names that could escape a directory or confuse a store key."""
    if not filename or filename.startswith(".") or "/" in filename or "\\" in filename:
        return False
    return not any(unicodedata.category(c) == "Cc" for c in filename)


def is_project_file(filename: str, normalized_project: str) -> bool:
    """Whether ``filename`` is a distribution file of the (normalized) project.

    Wheels carry the escaped name up to the first ``-``. Sdists and eggs are split like pip
    does: some ``-`` must separate a prefix that normalizes to the project from a version.
    """
    if not _is_safe_filename(filename):
        return False
    split = _split_extension(filename)
    if split is None:
        return False
    stem, ext = split
    if ext == ".whl":
        parts = stem.split("-")
        return len(parts) in (5, 6) and _normalize(parts[0]) == normalized_project
    pos = stem.find("-")
    while pos > 0:
        if _normalize(stem[:pos]) == normalized_project and _VERSION_START_RE.match(
            stem[pos + 1 :]
        ):
            return True
        pos = stem.find("-", pos + 1)
    return False


# -- helpers shared by both formats -------------------------------------------------------------


def _hashes_from_mapping(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k).lower(): v.lower()
        for k, v in value.items()
        if isinstance(v, str) and _HASH_VALUE_RE.match(v)
    }


def _hash_from_fragment(fragment: str) -> dict[str, str]:
    """``sha256=HEX`` (or another hashlib algorithm) -> {algo: hex}; anything else -> {}."""
    algo, sep, value = fragment.partition("=")
    algo = algo.lower()
    if sep and algo in _HASH_ALGORITHMS and _HASH_VALUE_RE.match(value):
        return {algo: value.lower()}
    return {}


def _http_url(href: str, base: str) -> str | None:
    """Absolute http(s) URL without fragment, or None for other schemes."""
    url = urljoin(base, href.strip())
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    return url


def _basename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _add_file(files: list[UpstreamFile], seen: dict[str, int], f: UpstreamFile) -> None:
    """Append in upstream order; a later duplicate only replaces an entry without hashes."""
    index = seen.get(f.filename)
    if index is None:
        seen[f.filename] = len(files)
        files.append(f)
    elif not files[index].hashes and f.hashes:
        files[index] = f


def _is_json(body: bytes, content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime.startswith(JSON_CONTENT_TYPE):
        return True
    return body[:1024].lstrip().startswith(b"{")


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def _decode(body: bytes, content_type: str) -> str:
    try:
        return body.decode(_charset(content_type), errors="replace")
    except LookupError:  # unknown charset name
        return body.decode("utf-8", errors="replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_constant=_reject_constant)  # NaN is not JSON
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(f"invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ParseError("JSON response is not an object")
    meta = data.get("meta")
    version = meta.get("api-version") if isinstance(meta, dict) else None
    # A missing version is tolerated (home-grown indexes); a wrong major one is not.
    if version is not None:
        major = str(version).split(".", 1)[0]
        if major != "1":
            raise ParseError(f"unsupported simple API version {version!r}")
    return data


# -- project pages ------------------------------------------------------------------------------


def parse_project_page(
    body: bytes, content_type: str, base_url: str, project: str
) -> tuple[str, list[UpstreamFile]]:
    """Parse a project page into (display name, files of that project in upstream order).

    ``base_url`` is the URL the page was fetched from (after redirects), for relative links.
    """
    normalized = _normalize(project)
    if _is_json(body, content_type):
        return _parse_json_page(body, base_url, project, normalized)
    return _parse_html_page(_decode(body, content_type), base_url, project, normalized)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _json_yanked(value: object) -> bool | str:
    if isinstance(value, str):
        return value if value else True
    return bool(value)


def _json_core_metadata(entry: dict[str, Any]) -> dict[str, str] | bool:
    value = entry.get("core-metadata", entry.get("dist-info-metadata", False))
    if isinstance(value, dict):
        return _hashes_from_mapping(value) or True
    return bool(value)


def _parse_json_page(
    body: bytes, base_url: str, project: str, normalized: str
) -> tuple[str, list[UpstreamFile]]:
    data = _load_json(body)
    entries = data.get("files", [])
    if not isinstance(entries, list):
        raise ParseError("'files' is not a list")
    files: list[UpstreamFile] = []
    seen: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ParseError("a 'files' entry is not an object")
        filename, href = entry.get("filename"), entry.get("url")
        if not isinstance(filename, str) or not isinstance(href, str):
            raise ParseError("a 'files' entry lacks 'filename' or 'url'")
        url = _http_url(href, base_url)
        if url is None or not is_project_file(filename, normalized):
            continue
        url, fragment = urldefrag(url)
        hashes = _hashes_from_mapping(entry.get("hashes")) or _hash_from_fragment(fragment)
        size = entry.get("size")
        _add_file(
            files,
            seen,
            UpstreamFile(
                filename=filename,
                url=url,
                hashes=hashes,
                requires_python=_opt_str(entry.get("requires-python")),
                yanked=_json_yanked(entry.get("yanked", False)),
                core_metadata=_json_core_metadata(entry),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                upload_time=_opt_str(entry.get("upload-time")),
            ),
        )
    name = data.get("name")
    display = name if isinstance(name, str) and _normalize(name) == normalized else project
    return display, files


class _PageParser(HTMLParser):
    """Collects anchors, the first ``<base href>`` and the title of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.anchors: list[dict[str, str | None]] = []
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))
        elif tag == "base" and self.base is None:
            href = dict(attrs).get("href")
            if href:
                self.base = href
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)


def _html_yanked(attrs: dict[str, str | None]) -> bool | str:
    if "data-yanked" not in attrs:
        return False
    return attrs["data-yanked"] or True


def _html_core_metadata(attrs: dict[str, str | None]) -> dict[str, str] | bool:
    for key in ("data-core-metadata", "data-dist-info-metadata"):
        if key in attrs:
            value = (attrs[key] or "").strip()
            if value.lower() == "false":
                return False
            return _hash_from_fragment(value) or True
    return False


def _parse_html_page(
    text: str, base_url: str, project: str, normalized: str
) -> tuple[str, list[UpstreamFile]]:
    parser = _PageParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception as e:  # html.parser is lenient; be safe anyway
        raise ParseError(f"unparsable HTML: {e}") from e
    base = urljoin(base_url, parser.base.strip()) if parser.base else base_url
    files: list[UpstreamFile] = []
    seen: dict[str, int] = {}
    for attrs in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        absolute = _http_url(href, base)
        if absolute is None:
            continue
        url, fragment = urldefrag(absolute)
        filename = _basename(url)
        if not is_project_file(filename, normalized):
            continue
        _add_file(
            files,
            seen,
            UpstreamFile(
                filename=filename,
                url=url,
                hashes=_hash_from_fragment(fragment),
                requires_python=_opt_str(attrs.get("data-requires-python")),
                yanked=_html_yanked(attrs),
                core_metadata=_html_core_metadata(attrs),
            ),
        )
    display = project
    m = _TITLE_RE.match("".join(parser.title))
    if m and _normalize(m.group(1)) == normalized:
        display = m.group(1)
    return display, files


# -- the project list ---------------------------------------------------------------------------


_JSON_NAME_RE = re.compile(rb'"name"\s*:\s*"([^"]*)"')


def parse_project_list(body: bytes, content_type: str) -> list[str]:
    """Project names of a root simple page, as given; fast enough for ~800k projects."""
    if _is_json(body, content_type):
        start = body.find(b'"projects"')
        if start != -1 and b"\\" not in body:
            # The common PEP 691 list: one flat {"name": ...} object per project. A regex
            # yields just the names (json.loads would build ~780k dicts on the way).
            tail = body[start:]
            found = _JSON_NAME_RE.findall(tail)
            if len(found) == tail.count(b"{") and found:
                return [m.decode("utf-8", "replace") for m in found]
        data = _load_json(body)
        projects = data.get("projects")
        if not isinstance(projects, list):
            raise ParseError("'projects' is not a list")
        try:
            return [p["name"] for p in projects if isinstance(p["name"], str)]
        except (TypeError, KeyError) as e:
            raise ParseError("a 'projects' entry lacks a name") from e
    text = _decode(body, content_type)
    names = _LIST_ANCHOR_RE.findall(text)
    unescape = html.unescape
    return [(unescape(n) if "&" in n else n).strip() for n in names if n and not n.isspace()]
