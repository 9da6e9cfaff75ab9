"""Which 200 answers count as a whole simple page (pure logic of devpid.mirror.pagecheck)."""

from __future__ import annotations

import json

import pytest

from devpid.mirror.pagecheck import check_project_page
from devpid.mirror.parse import ParseError

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "text/html; charset=utf-8"
PAGE = (b'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1">'
        b"<title>Links for foo</title></head><body><h1>Links for foo</h1>\n"
        b'<a href="foo-1.0.tar.gz#sha256=00">foo-1.0.tar.gz</a><br />\n</body>\n</html>\n')


def test_whole_pages_pass() -> None:
    check_project_page(PAGE, HTML, 1, delimited=False)
    check_project_page(PAGE + b"<!-- served by x -->\n", HTML, 1, delimited=False)
    empty = PAGE.replace(b'<a href="foo-1.0.tar.gz#sha256=00">foo-1.0.tar.gz</a><br />', b"")
    check_project_page(empty, HTML, 0, delimited=True)  # a project whose files were deleted
    bare = b'<html><body><a href="foo-1.0.tar.gz">foo-1.0.tar.gz</a>'  # home-grown, no tags
    check_project_page(bare, HTML, 1, delimited=True)  # its framing vouches for the end
    doc = {"meta": {"api-version": "1.1"}, "name": "foo", "files": []}
    check_project_page(json.dumps(doc).encode(), JSON, 0, delimited=True)


@pytest.mark.parametrize(("body", "ctype", "files", "delimited", "why"), [
    (PAGE[: PAGE.index(b"<br />")], HTML, 1, False, "cut off"),
    (b"<html><head><title>Down for maintenance</title></head><body>later</body></html>",
     HTML, 0, True, "not a simple project page"),
    (b"\x00\x9f\x12garbage", HTML, 0, True, "not a simple project page"),
    (b'{"meta": {"api-version": "1.1"}, "message": "busy"}', JSON, 0, True, "files"),
    (b'{"files": []}', JSON, 0, True, "meta, name"),
    (b'{"meta": {"api-version": "1.1"}, "name": "x", "fil', JSON, 0, True, "invalid JSON"),
    (b"[]", JSON, 0, True, "meta, name, files"),
])
def test_bad_answers_fail(body: bytes, ctype: str, files: int, delimited: bool,
                          why: str) -> None:
    with pytest.raises(ParseError, match=why):
        check_project_page(body, ctype, files, delimited)


@pytest.mark.timeout(20)
def test_a_tail_of_many_comments_is_judged_at_once() -> None:
    """A cut-off page whose tail is the closing tag, many empty comments and one stray byte
    made the closing-tag pattern backtrack exponentially (about 4x per 2 more comments), on
    the reactor thread. 60 comments would take hours there; now it is refused at once."""
    body = PAGE + b"<!---->" * 60 + b"x"
    with pytest.raises(ParseError, match="cut off"):
        check_project_page(body, HTML, 1, delimited=False)
    check_project_page(PAGE + b"<!---->" * 60, HTML, 1, delimited=False)  # whole: accepted
