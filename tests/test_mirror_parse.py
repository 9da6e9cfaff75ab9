"""Tests for devpid.mirror.parse: what we accept from an upstream's simple pages."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devpid.mirror.parse import (
    ParseError,
    UpstreamFile,
    is_project_file,
    parse_project_list,
    parse_project_page,
)

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
BASE = "https://upstream.test/simple/foo-bar/"
H1 = "a" * 64
H2 = "b" * 64


def _json_page(files: list[dict[str, Any]], version: str = "1.1", name: str = "foo-bar") -> bytes:
    return json.dumps({"meta": {"api-version": version}, "name": name, "files": files}).encode()


# -- JSON (PEP 691) -----------------------------------------------------------------------------


def test_json_page_all_fields() -> None:
    body = _json_page(
        [
            {
                "filename": "foo_bar-1.0-py3-none-any.whl",
                "url": "../../files/foo_bar-1.0-py3-none-any.whl#sha256=" + H1,
                "hashes": {"sha256": H1},
                "requires-python": ">=3.8",
                "yanked": False,
                "core-metadata": {"sha256": H2},
                "size": 1234,
                "upload-time": "2024-01-02T03:04:05.123456Z",
            },
            {
                "filename": "Foo.Bar-1.0.tar.gz",
                "url": "https://files.test/f/Foo.Bar-1.0.tar.gz",
                "hashes": {},
                "yanked": "broken build",
                "dist-info-metadata": True,
            },
            {
                "filename": "foo_bar-0.9-py3-none-any.whl",
                "url": "https://files.test/f/foo_bar-0.9-py3-none-any.whl",
                "hashes": {"sha256": H2},
                "yanked": True,
                "requires-python": "",
            },
        ]
    )
    name, files = parse_project_page(body, JSON_TYPE, BASE, "Foo_Bar")
    assert name == "foo-bar"
    assert [f.filename for f in files] == [
        "foo_bar-1.0-py3-none-any.whl",
        "Foo.Bar-1.0.tar.gz",
        "foo_bar-0.9-py3-none-any.whl",
    ]
    whl, sdist, old = files
    assert whl == UpstreamFile(
        filename="foo_bar-1.0-py3-none-any.whl",
        url="https://upstream.test/files/foo_bar-1.0-py3-none-any.whl",
        hashes={"sha256": H1},
        requires_python=">=3.8",
        yanked=False,
        core_metadata={"sha256": H2},
        size=1234,
        upload_time="2024-01-02T03:04:05.123456Z",
    )
    assert sdist.yanked == "broken build"
    assert sdist.core_metadata is True
    assert sdist.hashes == {}
    assert sdist.size is None and sdist.upload_time is None
    assert old.yanked is True
    assert old.requires_python is None
    assert old.core_metadata is False


def test_json_detected_by_body_and_filters_foreign_files() -> None:
    body = b"  \n" + _json_page(
        [
            {"filename": "foo_bar-1.0.zip", "url": "/f/foo_bar-1.0.zip", "hashes": {}},
            {"filename": "other-1.0.tar.gz", "url": "/f/other-1.0.tar.gz", "hashes": {}},
            {"filename": "foo_bar-1.0.exe", "url": "/f/foo_bar-1.0.exe", "hashes": {}},
            {"filename": "foo_bar-1.0.tar.gz", "url": "ftp://x/foo_bar-1.0.tar.gz", "hashes": {}},
            {"filename": "foo-bar-baz-1.0.tar.gz", "url": "/f/foo-bar-baz-1.0.tar.gz"},
        ]
    )
    _, files = parse_project_page(body, "text/plain", BASE, "foo-bar")
    assert [(f.filename, f.url) for f in files] == [
        ("foo_bar-1.0.zip", "https://upstream.test/f/foo_bar-1.0.zip")
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"{}garbage",
        json.dumps({"meta": {"api-version": "2.0"}, "files": []}).encode(),
        json.dumps({"meta": {"api-version": "1.0"}, "files": {}}).encode(),
        json.dumps({"meta": {"api-version": "1.0"}, "files": [1]}).encode(),
        json.dumps({"meta": {"api-version": "1.0"}, "files": [{"filename": "x"}]}).encode(),
        # NaN and Infinity are not JSON: an upstream must not get them into our pages
        b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "foo_bar-1.0.tar.gz", '
        b'"url": "foo_bar-1.0.tar.gz", "hashes": {}, "size": NaN}]}',
    ],
)
def test_json_garbage(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_project_page(body, JSON_TYPE, BASE, "foo-bar")


def test_json_array_is_garbage() -> None:
    with pytest.raises(ParseError):
        parse_project_page(b"[1, 2]", JSON_TYPE, BASE, "foo-bar")


# -- HTML (PEP 503) -----------------------------------------------------------------------------

HTML = f"""<!DOCTYPE html>
<html><head><title>Links for Foo.Bar</title>
<base href="/packages/">
</head><body>
<h1>Links for Foo.Bar</h1>
<a href="ab/foo_bar-1.0-py3-none-any.whl#sha256={H1}"
   data-requires-python="&gt;=3.8,&lt;4" data-core-metadata="sha256={H2}">wheel</a>
<a href="https://files.test/x/foo.bar-1.0.tar.gz#md5=0123456789abcdef0123456789abcdef"
   data-yanked="">sdist</a>
<a href="../foo_bar-0.1.tar.gz" data-yanked="do not use &amp; bad"
   data-dist-info-metadata="true">old</a>
<a href="foo_bar-0.2.tar.gz" data-yanked>no value</a>
<a href="other-1.0.tar.gz">foreign project</a>
<a href="foo-bar-extras-1.0.tar.gz">longer project name</a>
<a href="javascript:alert(1)">js</a>
<a href="mailto:foo_bar-1.0.tar.gz">mail</a>
<a href="/">home</a>
<a>no href</a>
<a href="foo_bar-2.0.tar.gz">unhashed first</a>
<a href="foo_bar-2.0.tar.gz#sha256={H2}">hashed duplicate</a>
<a href="foo_bar-2.0.tar.gz#sha256={H1}">second hashed duplicate</a>
<a href="foo%5Fbar-3.0.tar.gz#egg=foo_bar">percent-encoded</a>
<a href="..%2F..%2Fetc-1.0.tar.gz">traversal</a>
</body></html>
"""


def test_html_page() -> None:
    name, files = parse_project_page(
        HTML.encode(),
        "text/html; charset=utf-8",
        "https://upstream.test/simple/foo-bar/",
        "foo-bar",
    )
    assert name == "Foo.Bar"
    by_name = {f.filename: f for f in files}
    assert [f.filename for f in files] == [
        "foo_bar-1.0-py3-none-any.whl",
        "foo.bar-1.0.tar.gz",
        "foo_bar-0.1.tar.gz",
        "foo_bar-0.2.tar.gz",
        "foo_bar-2.0.tar.gz",
        "foo_bar-3.0.tar.gz",
    ]
    whl = by_name["foo_bar-1.0-py3-none-any.whl"]
    assert whl.url == "https://upstream.test/packages/ab/foo_bar-1.0-py3-none-any.whl"
    assert whl.hashes == {"sha256": H1}
    assert whl.requires_python == ">=3.8,<4"
    assert whl.core_metadata == {"sha256": H2}
    assert whl.yanked is False
    sdist = by_name["foo.bar-1.0.tar.gz"]
    assert sdist.url == "https://files.test/x/foo.bar-1.0.tar.gz"
    assert sdist.hashes == {"md5": "0123456789abcdef0123456789abcdef"}
    assert sdist.yanked is True
    assert sdist.core_metadata is False
    old = by_name["foo_bar-0.1.tar.gz"]
    assert old.url == "https://upstream.test/foo_bar-0.1.tar.gz"
    assert old.yanked == "do not use & bad"
    assert old.core_metadata is True
    assert by_name["foo_bar-0.2.tar.gz"].yanked is True
    dup = by_name["foo_bar-2.0.tar.gz"]
    assert dup.hashes == {"sha256": H2}
    assert dup.url == "https://upstream.test/packages/foo_bar-2.0.tar.gz"
    encoded = by_name["foo_bar-3.0.tar.gz"]
    assert encoded.hashes == {}
    assert encoded.url == "https://upstream.test/packages/foo%5Fbar-3.0.tar.gz"
    assert all(f.size is None and f.upload_time is None for f in files)


def test_html_without_base_resolves_against_page_url() -> None:
    body = b'<a href="../../files/foo-1.0.tar.gz">x</a><a href="foo-1.1.tar.gz">y</a>'
    name, files = parse_project_page(
        body, "text/html", "http://h:8080/root/pypi/+simple/foo/", "foo"
    )
    assert name == "foo"
    assert [f.url for f in files] == [
        "http://h:8080/root/pypi/files/foo-1.0.tar.gz",
        "http://h:8080/root/pypi/+simple/foo/foo-1.1.tar.gz",
    ]


def test_html_pep691_html_content_type_and_empty_page() -> None:
    body = b"<html><body><h1>nothing</h1></body></html>"
    assert parse_project_page(body, "application/vnd.pypi.simple.v1+html", BASE, "x") == ("x", [])
    assert parse_project_page(b"", "text/html", BASE, "x") == ("x", [])


def test_html_title_of_other_project_is_ignored() -> None:
    body = b"<title>Links for something-else</title>"
    assert parse_project_page(body, "text/html", BASE, "Foo")[0] == "Foo"


# -- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "project", "ok"),
    [
        ("foo_bar-1.0-py3-none-any.whl", "foo-bar", True),
        ("foo_bar-1.0-1-py3-none-any.whl", "foo-bar", True),
        ("foo_bar-1.0-py3-none.whl", "foo-bar", False),
        ("Foo.Bar-1.0.tar.gz", "foo-bar", True),
        ("foo-bar-1.0.tar.bz2", "foo-bar", True),
        ("foo-bar-1.0.tgz", "foo-bar", True),
        ("foo_bar-1.0-py3.8.egg", "foo-bar", True),
        ("foo-bar-v1.0.zip", "foo-bar", True),
        ("foo-bar-extras-1.0.tar.gz", "foo-bar", False),
        ("foo-bar-extras-1.0.tar.gz", "foo-bar-extras", True),
        ("foo-2-1.0.tar.gz", "foo-2", True),
        ("foo-bar.tar.gz", "foo-bar", False),
        ("foo-bar-1.0.exe", "foo-bar", False),
        (".foo-bar-1.0.tar.gz", "foo-bar", False),
        ("foo-bar-1.0\n.tar.gz", "foo-bar", False),
        ("x/foo-bar-1.0.tar.gz", "foo-bar", False),
        (".tar.gz", "foo-bar", False),
    ],
)
def test_is_project_file(filename: str, project: str, ok: bool) -> None:
    assert is_project_file(filename, project) is ok


# -- JSON round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f",
    [
        UpstreamFile("a-1.tar.gz", "https://h/a-1.tar.gz"),
        UpstreamFile(
            "a-1-py3-none-any.whl",
            "https://h/a.whl",
            hashes={"sha256": H1},
            requires_python=">=3",
            yanked="reason",
            core_metadata={"sha256": H2},
            size=10,
            upload_time="2020-01-01T00:00:00Z",
        ),
        UpstreamFile("a-1.zip", "https://h/a-1.zip", yanked=True, core_metadata=True),
    ],
)
def test_upstream_file_json_round_trip(f: UpstreamFile) -> None:
    data = json.loads(json.dumps(f.to_json()))
    assert UpstreamFile.from_json(data) == f


# -- project list --------------------------------------------------------------------------------


def test_project_list_json() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.0", "_last-serial": 5},
            "projects": [{"name": "Foo", "_last-serial": 3}, {"name": "bar.baz"}],
        }
    ).encode()
    assert parse_project_list(body, JSON_TYPE) == ["Foo", "bar.baz"]


def test_project_list_html() -> None:
    body = (
        b"<!DOCTYPE html><html><head><title>Simple index</title></head><body>\n"
        b'<a href="/simple/foo/">Foo</a>\n'
        b"<A HREF='/simple/a-b/' data-x=\"1\">a&amp;b</A>\n"
        b'<a href="/simple/zzz/">\n  zzz  \n</a>\n'
        b'<a href="/simple/x/"></a>\n'
        b"</body></html>"
    )
    assert parse_project_list(body, "text/html") == ["Foo", "a&b", "zzz"]


@pytest.mark.parametrize("body", [b"{", b'{"meta": {}, "projects": [{"x": 1}]}', b'{"a": 1}'])
def test_project_list_garbage(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_project_list(body, JSON_TYPE)


def test_project_list_100k_names() -> None:
    names = [f"Project_{i}.x-{i % 7}" for i in range(100_000)]
    html_body = (
        "<!DOCTYPE html>\n<html><body>\n"
        + "".join(f'    <a href="/simple/{n.lower()}/">{n}</a>\n' for n in names)
        + "</body></html>\n"
    ).encode()
    json_body = json.dumps(
        {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    ).encode()
    started = time.perf_counter()
    assert parse_project_list(html_body, "text/html") == names
    assert parse_project_list(json_body, JSON_TYPE) == names
    # Generous bound: only catches an accidental switch to a quadratic or html.parser path.
    assert time.perf_counter() - started < 5.0
