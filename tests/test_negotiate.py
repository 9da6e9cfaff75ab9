"""Tests for devpid.web.negotiate: Accept parsing, PEP 691 format choice, UA sniffing."""

from __future__ import annotations

import pytest

from devpid.web.negotiate import (
    SIMPLE_HTML,
    SIMPLE_HTML_LATEST,
    SIMPLE_JSON,
    SIMPLE_JSON_LATEST,
    TEXT_HTML,
    VIEW_JSON,
    best_match,
    choose_simple_format,
    choose_view,
    is_installer,
    parse_accept,
    wants_json_api,
)

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
FIREFOX_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


# --- parse_accept ---------------------------------------------------------------------


def test_parse_accept_basic() -> None:
    assert parse_accept(PIP_ACCEPT) == [
        (SIMPLE_JSON, 1.0),
        (SIMPLE_HTML, 0.1),
        (TEXT_HTML, 0.01),
    ]


def test_parse_accept_params_case_and_spaces() -> None:
    assert parse_accept(" Text/HTML ; level=1 ; Q=0.5 ,  */* ") == [
        ("text/html", 0.5),
        ("*/*", 1.0),
    ]
    assert parse_accept('text/html;q="0.3"') == [("text/html", 0.3)]
    assert parse_accept("*") == [("*/*", 1.0)]
    assert parse_accept("text/html;q=0") == [("text/html", 0.0)]


@pytest.mark.parametrize("header", [None, "", " ", ",,,", ";;", "garbage", "/", "a/", "/b"])
def test_parse_accept_empty_or_garbage(header: str | None) -> None:
    assert parse_accept(header) == []


@pytest.mark.parametrize(
    "element",
    [
        "text/html;q=abc",
        "text/html;q=",
        "text/html;q",
        "text/html;q=1.5",
        "text/html;q=-0.1",
        "text/html;q=nan",
        "text/html;q=inf",
        "*/html",
        "text/html/x",
        "te xt/html",
        "text/ht\x00ml",
    ],
)
def test_parse_accept_skips_malformed_elements(element: str) -> None:
    assert parse_accept(f"{element}, application/json") == [("application/json", 1.0)]


def test_parse_accept_huge_header_does_not_explode() -> None:
    header = ", ".join(["text/plain;q=0.5"] * 100_000)
    result = parse_accept(header)
    assert 0 < len(result) < 10_000


# --- best_match -----------------------------------------------------------------------


def test_best_match_missing_header_takes_first_offer() -> None:
    assert best_match(None, ["a/b", "c/d"]) == "a/b"
    assert best_match("", ["a/b", "c/d"]) == "a/b"
    assert best_match("garbage", ["a/b", "c/d"]) == "a/b"
    assert best_match("a/b", []) is None


def test_best_match_q_values() -> None:
    assert best_match("a/b;q=0.5, c/d", ["a/b", "c/d"]) == "c/d"
    assert best_match("a/b, c/d", ["c/d", "a/b"]) == "c/d"  # tie: offer order


def test_best_match_specificity() -> None:
    # the exact range decides, even if a wildcard gives a higher q
    header = "*/*;q=1, text/html;q=0.1, text/plain;q=0.5"
    assert best_match(header, ["text/html", "text/plain"]) == "text/plain"
    assert best_match("text/*;q=0.2, */*;q=0.9", ["text/html", "image/png"]) == "image/png"
    assert best_match("text/*, text/html;q=0", ["text/html", "text/plain"]) == "text/plain"


def test_best_match_q0_excludes() -> None:
    assert best_match("text/html;q=0", ["text/html"]) is None
    assert best_match("*/*;q=0", ["text/html"]) is None
    assert best_match("*/*, text/html;q=0", ["text/html"]) is None


def test_best_match_nothing_acceptable() -> None:
    assert best_match("image/png", ["text/html", "application/json"]) is None


def test_best_match_offer_case_and_params() -> None:
    assert best_match("TEXT/HTML", ["text/html; charset=utf-8"]) == "text/html; charset=utf-8"


# --- choose_simple_format -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, SIMPLE_JSON),
        (UV_ACCEPT, SIMPLE_JSON),
        (SIMPLE_JSON, SIMPLE_JSON),
        (SIMPLE_HTML, SIMPLE_HTML),
        (SIMPLE_JSON_LATEST, SIMPLE_JSON),
        (SIMPLE_HTML_LATEST, SIMPLE_HTML),
        (f"{SIMPLE_HTML}, {SIMPLE_JSON};q=0.5", SIMPLE_HTML),
        ("*/*", TEXT_HTML),
        ("application/*", SIMPLE_JSON),
        (FIREFOX_ACCEPT, TEXT_HTML),
        (CHROME_ACCEPT, TEXT_HTML),
        ("text/html", TEXT_HTML),
        ("application/json", TEXT_HTML),
        ("image/png", TEXT_HTML),
        (None, TEXT_HTML),
        ("", TEXT_HTML),
        ("*/*;q=0", TEXT_HTML),
        (f"{SIMPLE_JSON};q=bogus", TEXT_HTML),
        ("\x00\xff;;,,q=", TEXT_HTML),
    ],
)
def test_choose_simple_format_accept(accept: str | None, expected: str) -> None:
    assert choose_simple_format(accept, None) == expected


def test_choose_simple_format_html_excluded() -> None:
    assert choose_simple_format(f"text/html;q=0, {SIMPLE_JSON};q=0.1", None) == SIMPLE_JSON


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (SIMPLE_JSON, SIMPLE_JSON),
        (SIMPLE_HTML, SIMPLE_HTML),
        (TEXT_HTML, TEXT_HTML),
        (SIMPLE_JSON_LATEST, SIMPLE_JSON),
        (" Application/Vnd.Pypi.Simple.V1+JSON ", SIMPLE_JSON),
    ],
)
def test_choose_simple_format_param_wins(param: str, expected: str) -> None:
    assert choose_simple_format(FIREFOX_ACCEPT, param) == expected
    assert choose_simple_format(PIP_ACCEPT, param) == expected


@pytest.mark.parametrize("param", ["", "json", "application/json", "text/plain", "\x00"])
def test_choose_simple_format_invalid_param_ignored(param: str) -> None:
    assert choose_simple_format(PIP_ACCEPT, param) == SIMPLE_JSON
    assert choose_simple_format(None, param) == TEXT_HTML


# --- wants_json_api -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", True),
        ("text/html, application/json;q=0.5", True),
        ("Application/JSON", True),
        ("application/json;q=0", False),
        (SIMPLE_JSON, False),
        ("*/*", False),
        ("text/html", False),
        ("", False),
        (None, False),
        ("application/json-seq", False),
    ],
)
def test_wants_json_api(accept: str | None, expected: bool) -> None:
    assert wants_json_api(accept) is expected


# --- is_installer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ua",
    [
        'pip/24.0 {"ci":null,"cpu":"x86_64"}',
        "uv/0.5.1",
        "setuptools/69.0 Python-urllib/3.11",
        "distribute/0.6",
        "pex/2.1",
        "Python-urllib/3.11 setuptools/69.0",
        "a b c pip/1",
    ],
)
def test_is_installer(ua: str) -> None:
    assert is_installer(ua)


@pytest.mark.parametrize(
    "ua",
    [
        None,
        "",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        "curl/8.0",
        "devpi-client/7.0",
        "python-requests/2.31",
        "pipx/1.0",
        "xpip/1.0",
        "pip",
        "twine/6.0 CPython/3.11",
    ],
)
def test_is_not_installer(ua: str | None) -> None:
    assert not is_installer(ua)


def test_is_installer_long_ua_is_fast() -> None:
    assert not is_installer("a " * 50_000 + "x")


# --- choose_view (the web view: browsers get HTML, API clients JSON) -------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (CHROME_ACCEPT, TEXT_HTML),
        (FIREFOX_ACCEPT, TEXT_HTML),
        ("text/html", TEXT_HTML),
        ("application/json", VIEW_JSON),
        ("text/html;q=0.5, application/json", VIEW_JSON),
        ("text/html, application/json", VIEW_JSON),  # a tie keeps JSON, as before
        ("*/*", VIEW_JSON),
        ("", VIEW_JSON),
        (None, VIEW_JSON),
        ("garbage;;", VIEW_JSON),  # unparseable: accept anything
        ("image/png", None),
        ("text/plain", None),
        ("text/html;q=0", None),
        (PIP_ACCEPT, TEXT_HTML),  # text/html q=0.01 beats no JSON at all...
    ],
)
def test_choose_view(accept: str | None, expected: str | None) -> None:
    assert choose_view(accept) == expected


def test_choose_view_with_simple_types() -> None:
    """...but not where the resource also serves the PEP 691 types pip prefers."""
    extra = (SIMPLE_JSON, SIMPLE_HTML)
    assert choose_view(PIP_ACCEPT, extra) == VIEW_JSON
    assert choose_view(SIMPLE_HTML, extra) == VIEW_JSON
    assert choose_view(CHROME_ACCEPT, extra) == TEXT_HTML
    assert choose_view("image/png", extra) is None
