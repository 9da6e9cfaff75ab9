"""Tests for devpid.model.names: the rules that keep names safe in keys, URLs and paths."""

from __future__ import annotations

import pytest

from devpid.model.names import (
    ARCHIVE_EXTENSIONS,
    DistFile,
    DistKind,
    InvalidFilename,
    check_safe_filename,
    filename_matches,
    normalize_name,
    parse_dist_filename,
    validate_project_name,
    validate_user_or_index_name,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo", "foo"),
        ("Foo_Bar", "foo-bar"),
        ("foo.bar", "foo-bar"),
        ("foo-_.bar", "foo-bar"),
        ("FOO--BAR__baz", "foo-bar-baz"),
        ("zope.interface", "zope-interface"),
    ],
)
def test_normalize_name(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


@pytest.mark.parametrize("name", ["alice", "dev", "a.b-c_d", "me@example", "A1", "x" * 64, "1"])
def test_valid_user_or_index_names(name: str) -> None:
    assert validate_user_or_index_name(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "x y",
        "a/b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        ".",
        "..",
        ".hidden",
        "+simple",
        "+api",
        "a+b",
        "a:b",
        "a%2fb",
        "a?b",
        "a#b",
        "ä",
        *list("!\"#$%&'()*+,/:;<=>?[\\]^`{|}~"),
    ],
)
def test_invalid_user_or_index_names(name: str) -> None:
    assert validate_user_or_index_name(name) is not None


def test_user_name_message() -> None:
    msg = validate_user_or_index_name("x y", "user name")
    assert msg == "user name 'x y' is invalid: only letters, digits and -._@ are allowed"


@pytest.mark.parametrize("name", ["foo", "Foo.Bar", "a", "1", "foo-bar_baz", "x" * 200])
def test_valid_project_names(name: str) -> None:
    assert validate_project_name(name) is None


@pytest.mark.parametrize(
    "name", ["", "-foo", "foo-", "foo bar", ".foo", "foo.", "foo/bar", "x" * 201, "fö", "_"]
)
def test_invalid_project_names(name: str) -> None:
    assert validate_project_name(name) is not None


@pytest.mark.parametrize(
    ("filename", "project", "version", "kind", "packagetype"),
    [
        ("foo-1.0-py3-none-any.whl", "foo", "1.0", "wheel", "bdist_wheel"),
        (
            "Foo_Bar-2.0.post1-1-cp311-cp311-manylinux_2_17_x86_64.whl",
            "foo-bar",
            "2.0.post1",
            "wheel",
            "bdist_wheel",
        ),
        ("foo-1.0.tar.gz", "foo", "1.0", "sdist", "sdist"),
        ("Foo.Bar-1.0rc1.zip", "foo-bar", "1.0rc1", "sdist", "sdist"),
        ("foo-1.0.tgz", "foo", "1.0", "sdist", "sdist"),
        ("foo-1.0.tar.bz2", "foo", "1.0", "sdist", "sdist"),
        # legacy: version kept as written, split at the last '-' before a digit
        ("foo-bar-1.0-dev.tar.gz", "foo-bar", "1.0-dev", "sdist", "sdist"),
        ("foo-2-1.0.tar.gz", "foo-2", "1.0", "sdist", "sdist"),
        ("foo-1.0_beta.zip", "foo", "1.0_beta", "sdist", "sdist"),
        ("foo-1.0-py2.7.egg", "foo", "1.0", "other", "bdist_egg"),
        ("foo_bar-1.0-py2.7-linux-x86_64.egg", "foo-bar", "1.0", "other", "bdist_egg"),
        ("foo-1.0.win32.exe", "foo", "1.0", "other", "bdist_wininst"),
        ("foo-1.0.win-amd64-py2.7.exe", "foo", "1.0", "other", "bdist_wininst"),
        ("foo-1.0.win32-py2.7.msi", "foo", "1.0", "other", "bdist_msi"),
        ("foo-1.0-1.noarch.rpm", "foo", "1.0", "other", "bdist_rpm"),
        ("python-foo_1.0-1_all.deb", "python-foo", "1.0", "other", "bdist_deb"),
        ("foo-1.0-macosx10.6.dmg", "foo", "1.0", "other", "bdist_dmg"),
    ],
)
def test_parse_dist_filename(
    filename: str, project: str, version: str, kind: DistKind, packagetype: str
) -> None:
    expected = DistFile(filename, project, version, kind, packagetype)
    assert parse_dist_filename(filename) == expected


def test_wheel_version_kept_as_written() -> None:
    # packaging would normalize 1.0.0-1 / 01.0; we keep what the file name says.
    assert parse_dist_filename("foo-01.0-py3-none-any.whl").version == "01.0"


@pytest.mark.parametrize(
    "filename",
    [
        "foo-1.0.txt",
        "foo.whl",
        "foo-1.0.whl",
        "foo-1.0-py3-none.whl",
        "foo.tar.gz",
        "foo-bar.tar.gz",
        "-1.0.tar.gz",
        "foo bar-1.0.tar.gz",
        ".tar.gz",
        "",
        "foo-1.0.tar.xz",
    ],
)
def test_parse_dist_filename_invalid(filename: str) -> None:
    with pytest.raises(InvalidFilename):
        parse_dist_filename(filename)


def test_invalid_filename_is_value_error() -> None:
    assert issubclass(InvalidFilename, ValueError)


@pytest.mark.parametrize(
    "filename", ["foo-1.0.tar.gz", "foo-1.0-py3-none-any.whl", "foo-1.0.zip", "Ünï-1.0.tar.gz"]
)
def test_safe_filenames(filename: str) -> None:
    check_safe_filename(filename)


@pytest.mark.parametrize(
    "filename",
    [
        "",
        ".",
        "..",
        ".foo-1.0.tar.gz",
        "../foo-1.0.tar.gz",
        "a/foo-1.0.tar.gz",
        "a\\foo-1.0.tar.gz",
        "foo\x00-1.0.tar.gz",
        "foo\n-1.0.tar.gz",
        "foo\x7f-1.0.tar.gz",
        "foo\x85-1.0.tar.gz",
        "foo-1.0.tar.gz\x00.txt",
        "foo-1.0.txt",
        "foo-1.0.html",
        "x" * 250 + ".tar.gz",
        "foo\udcff-1.0.tar.gz",
    ],
)
def test_unsafe_filenames(filename: str) -> None:
    with pytest.raises(InvalidFilename):
        check_safe_filename(filename)


def test_filename_length_counts_utf8_bytes() -> None:
    fits = "ü" * 125 + ".zip"  # 254 bytes
    check_safe_filename(fits)
    with pytest.raises(InvalidFilename):
        check_safe_filename("ü" + fits)


def test_all_archive_extensions_are_safe() -> None:
    for ext in ARCHIVE_EXTENSIONS:
        check_safe_filename("foo-1.0" + ext)


@pytest.mark.parametrize(
    ("filename", "project", "version"),
    [
        ("foo-1.0.tar.gz", "foo", "1.0"),
        ("Foo_Bar-1.0.tar.gz", "foo.bar", "1.0"),
        ("foo_bar-1.0-py3-none-any.whl", "Foo-Bar", "1.0"),
        ("foo-1.0.post1.tar.gz", "foo", "1.0-1"),  # same PEP 440 version
        ("foo-1.0.0-py3-none-any.whl", "foo", "1.0.0"),
        ("foo-1.0-dev.tar.gz", "foo", "1.0-dev"),
        ("foo-1.0_dev.tar.gz", "foo", "1.0-dev"),  # PEP 427 escaping
        ("foo-2013b.tar.gz", "foo", "2013b"),
        ("foo-1.0.win32.exe", "foo", "1.0"),
        ("foo-1.0rc1.linux-x86_64.exe", "foo", "1.0rc1"),
    ],
)
def test_filename_matches(filename: str, project: str, version: str) -> None:
    assert filename_matches(filename, project, version) is None


def test_filename_matches_wrong_version() -> None:
    assert filename_matches("foo-1.1.tar.gz", "foo", "1.0") == (
        "filename 'foo-1.1.tar.gz' does not contain version '1.0'"
    )
    assert filename_matches("foo-1.0.1.tar.gz", "foo", "1.0") is not None
    assert filename_matches("foo-1.0-py3-none-any.whl", "foo", "1.0.post1") is not None


def test_filename_matches_wrong_project() -> None:
    assert filename_matches("bar-1.0.tar.gz", "foo", "1.0") == (
        "filename 'bar-1.0.tar.gz' does not match project name 'foo'"
    )
    assert filename_matches("foo-bar-1.0.tar.gz", "foo", "bar-1.0") is not None


def test_filename_matches_unparseable() -> None:
    assert filename_matches("foo.txt", "foo", "1.0") is not None
