"""Is a 200 answer from an upstream really a complete simple page?

Parsing is lenient on purpose (any HTML yields "the links it has"), so without this check a
maintenance or portal page, random bytes or a page cut off in the middle would replace a
cached page with fewer or no files. An answer that fails here counts as an upstream failure:
the cached page stays and a never-cached project gets a 502.

Rules, cheap enough for a 15 MB page:

- HTML whose end the transport could not vouch for (no Content-Length, no chunked framing:
  the connection just closed) must end with ``</html>`` or ``</body>``; a body cut short
  despite its framing is already an error of the HTTP client. This holds for the project
  list too, so a cut list never replaces the whole one;
- a page with no file of the project must show it is a simple page: PEP 691 JSON needs the
  required ``meta``, ``name`` and ``files`` keys, HTML the PEP 629 version meta tag or a
  "Links for ..." title or heading, as every index we know writes them.
"""

from __future__ import annotations

import json
import re

from devpid.mirror.parse import JSON_CONTENT_TYPE, ParseError

__all__ = ["check_project_list", "check_project_page"]

_TAIL = 1024  # bytes at the end of a body that may hold the closing tag
_HEAD = 64 * 1024  # bytes at the start of a body that hold the markers of a simple page
# A comment's body may not run across "-->": with ``.*?`` a tail of many comments and no
# match took exponential time (a cut-off page from a hostile upstream froze the reactor).
_CLOSING_RE = re.compile(rb"</(?:html|body)\s*>\s*(?:<!--(?:(?!-->).)*-->\s*)*\Z",
                         re.IGNORECASE | re.DOTALL)
_MARKER_RE = re.compile(
    rb"""<meta\b[^>]*\bname\s*=\s*["']?pypi:repository-version"""
    rb"|<(?:title|h1)\b[^>]*>[^<]*\blinks\s+for\b",
    re.IGNORECASE,
)


def _looks_json(body: bytes, content_type: str) -> bool:
    """The same choice parse.parse_project_page makes between JSON and HTML."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith(JSON_CONTENT_TYPE) or body[:1024].lstrip().startswith(b"{")


def _check_html_end(body: bytes, delimited: bool) -> None:
    if not delimited and not _CLOSING_RE.search(body[-_TAIL:]):
        raise ParseError(
            "HTML page without </html> and without Content-Length: probably cut off"
        )


def check_project_list(body: bytes, content_type: str, delimited: bool) -> None:
    """Raise ParseError if an HTML project list may have been cut off (JSON cannot parse)."""
    if not _looks_json(body, content_type):
        _check_html_end(body, delimited)


def check_project_page(body: bytes, content_type: str, files: int, delimited: bool) -> None:
    """Raise ParseError unless ``body`` (which parsed into ``files`` files) is a whole page.

    ``delimited`` says the HTTP framing (Content-Length or chunked) proved the body complete.
    """
    if _looks_json(body, content_type):
        if files:
            return  # it parsed, so the JSON is complete and has a list of files
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ParseError(f"invalid JSON: {e}") from e
        missing = [
            key
            for key, kind in (("meta", dict), ("name", str), ("files", list))
            if not isinstance(data, dict) or not isinstance(data.get(key), kind)
        ]
        if missing:
            raise ParseError(f"not a PEP 691 project page (no valid {', '.join(missing)})")
        return
    _check_html_end(body, delimited)
    if not files and not _MARKER_RE.search(body[:_HEAD]):
        raise ParseError(
            "not a simple project page (no files, no PEP 629 version and no 'Links for' title)"
        )
