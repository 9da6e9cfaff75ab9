"""Tests for devpid.model.metadata: parsing core metadata out of untrusted archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from devpid.model import metadata as md
from devpid.model.metadata import (
    CoreMetadata,
    MetadataError,
    metadata_from_form,
    parse_metadata_bytes,
    read_core_metadata,
)

METADATA = b"""\
Metadata-Version: 2.1
Name: Foo_Bar
Version: 1.0
Summary: A test package
Home-page: UNKNOWN
Author: Jane Doe
Author-email: jane@example.invalid
License: MIT
Keywords: a,b
Platform: UNKNOWN
Classifier: Programming Language :: Python :: 3
Classifier: License :: OSI Approved :: MIT License
Project-URL: Source, https://example.invalid/src
Requires-Dist: requests (>=2)
Requires-Dist: attrs; extra == "x"
Requires-Python: >=3.8
Description-Content-Type: text/markdown
Provides-Extra: x
Dynamic: license

# Foo

The long description.
"""


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# --- parse_metadata_bytes -------------------------------------------------------------


def test_parse_metadata_fields() -> None:
    meta = parse_metadata_bytes(METADATA)
    f = meta.fields
    assert meta.raw == METADATA
    assert meta.name == "Foo_Bar"
    assert meta.version == "1.0"
    assert f["metadata_version"] == "2.1"
    assert f["summary"] == "A test package"
    assert f["home_page"] == ""
    assert f["author_email"] == "jane@example.invalid"
    assert f["keywords"] == "a,b"
    assert f["platform"] == []
    assert f["classifiers"] == [
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
    ]
    assert f["project_urls"] == ["Source, https://example.invalid/src"]
    assert f["requires_dist"] == ["requests (>=2)", 'attrs; extra == "x"']
    assert f["requires_python"] == ">=3.8"
    assert f["description_content_type"] == "text/markdown"
    assert f["provides_extras"] == ["x"]
    assert f["dynamic"] == ["license"]
    assert f["description"] == "# Foo\n\nThe long description.\n"
    assert "maintainer" not in f


def test_parse_metadata_all_keys_known() -> None:
    assert set(md.LIST_FIELDS) <= set(md.FIELDS)
    assert "license_file" in md.LIST_FIELDS and "license_expression" in md.FIELDS


def test_parse_metadata_description_header_is_dedented() -> None:
    raw = (
        b"Metadata-Version: 1.1\nName: foo\nVersion: 1\n"
        b"Description: first line\n        second line\n       |  indented third\n"
        b"License: UNKNOWN\n"
    )
    f = parse_metadata_bytes(raw).fields
    assert f["description"] == "first line\nsecond line\n  indented third"
    assert f["license"] == ""


def test_parse_metadata_body_wins_over_header() -> None:
    raw = b"Name: foo\nVersion: 1\nDescription: header\n\nbody text\n"
    assert parse_metadata_bytes(raw).fields["description"] == "body text\n"


def test_parse_metadata_crlf_and_folded_summary() -> None:
    raw = b"Name: foo\r\nVersion: 1\r\nSummary: a\r\n  folded\r\n\r\nbody\r\n"
    f = parse_metadata_bytes(raw).fields
    assert f["summary"] == "a folded"
    assert f["name"] == "foo"


def test_parse_metadata_non_utf8() -> None:
    raw = (
        b"Name: foo\nVersion: 1\nAuthor: J\xf6rg \xc3\xa9\nSummary: caf\xc3\xa9\n\nbad \xff body\n"
    )
    f = parse_metadata_bytes(raw).fields
    assert f["author"] == "J\ufffdrg \u00e9"
    assert f["summary"] == "caf\u00e9"
    assert f["description"] == "bad \ufffd body\n"


def test_parse_metadata_body_with_mime_headers_is_not_interpreted() -> None:
    raw = (
        b"Name: foo\nVersion: 1\nContent-Type: multipart/mixed; boundary=x\n"
        b"Content-Transfer-Encoding: base64\n\n--x\nhello\n"
    )
    assert parse_metadata_bytes(raw).fields["description"] == "--x\nhello\n"


@pytest.mark.parametrize(
    "raw", [b"", b"Version: 1\n", b"Name: foo\n", b"\x00\x01\x02binary", b"Name:\nVersion: 1\n"]
)
def test_parse_metadata_requires_name_and_version(raw: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_metadata_bytes(raw)


def test_parse_metadata_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(md, "MAX_METADATA_SIZE", 100)
    with pytest.raises(MetadataError, match="larger"):
        parse_metadata_bytes(b"Name: foo\nVersion: 1\n\n" + b"x" * 100)


# --- metadata_from_form ---------------------------------------------------------------


def test_metadata_from_form_twine() -> None:
    form = {
        ":action": ["file_upload"],
        "protocol_version": ["1"],
        "metadata_version": ["2.1"],
        "name": ["foo"],
        "version": ["1.0"],
        "filetype": ["sdist"],
        "summary": ["s"],
        "requires_python": [">=3.8"],
        "requires_dist": ["a", "b>1"],
        "classifiers": ["C :: 1", "C :: 2"],
        "provides_extra": ["x"],
        "license_file": ["LICENSE"],
        "home_page": ["UNKNOWN"],
        "platform": ["UNKNOWN"],
        "description": ["long"],
        "sha256_digest": ["00"],
    }
    assert metadata_from_form(form) == {
        "metadata_version": "2.1",
        "name": "foo",
        "version": "1.0",
        "summary": "s",
        "requires_python": ">=3.8",
        "requires_dist": ["a", "b>1"],
        "classifiers": ["C :: 1", "C :: 2"],
        "provides_extras": ["x"],
        "license_file": ["LICENSE"],
        "home_page": "",
        "platform": [],
        "description": "long",
    }


def test_metadata_from_form_pkginfo_names_and_empty() -> None:
    form = {"platforms": ["linux"], "supported_platforms": ["x"], "license_files": ["L"]}
    assert metadata_from_form(form) == {
        "platform": ["linux"],
        "supported_platform": ["x"],
        "license_file": ["L"],
    }
    assert metadata_from_form({}) == {}
    assert metadata_from_form({"summary": []}) == {}


# --- read_core_metadata: wheels -------------------------------------------------------


def test_wheel(tmp_path: Path) -> None:
    whl = make_wheel(
        tmp_path / "blob",
        {
            "foo_bar/__init__.py": b"",
            "foo_bar-1.0.dist-info/METADATA": METADATA,
            "foo_bar-1.0.dist-info/RECORD": b"",
        },
    )
    meta = read_core_metadata(whl, "foo_bar-1.0-py3-none-any.whl")
    assert isinstance(meta, CoreMetadata)
    assert meta.raw == METADATA
    assert meta.fields["name"] == "Foo_Bar"
    assert meta.fields["requires_python"] == ">=3.8"
    # str paths work too
    assert read_core_metadata(str(whl), "foo_bar-1.0-py3-none-any.whl").raw == METADATA


def test_wheel_ignores_nested_metadata(tmp_path: Path) -> None:
    whl = make_wheel(
        tmp_path / "w.whl",
        {
            "foo/vendored/x-1.dist-info/METADATA": b"Name: x\nVersion: 1\n",
            "foo-1.0.dist-info/METADATA": METADATA,
        },
    )
    assert read_core_metadata(whl, "foo-1.0-py3-none-any.whl").raw == METADATA


def test_wheel_several_dist_infos_picks_matching(tmp_path: Path) -> None:
    whl = make_wheel(
        tmp_path / "w.whl",
        {
            "other-1.dist-info/METADATA": b"Name: other\nVersion: 1\n",
            "foo_bar-1.0.dist-info/METADATA": METADATA,
        },
    )
    assert read_core_metadata(whl, "foo_bar-1.0-py3-none-any.whl").raw == METADATA
    with pytest.raises(MetadataError, match="several"):
        read_core_metadata(whl, "baz-1.0-py3-none-any.whl")


def test_wheel_without_dist_info(tmp_path: Path) -> None:
    whl = make_wheel(tmp_path / "w.whl", {"foo/__init__.py": b"", "foo-1.0.data/x": b""})
    with pytest.raises(MetadataError, match="dist-info"):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")


def test_wheel_dist_info_without_metadata(tmp_path: Path) -> None:
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/RECORD": b""})
    with pytest.raises(MetadataError, match="METADATA is missing"):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")


def test_corrupt_zip(tmp_path: Path) -> None:
    p = tmp_path / "w.whl"
    p.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 100)
    with pytest.raises(MetadataError, match="not a valid archive"):
        read_core_metadata(p, "foo-1.0-py3-none-any.whl")


def test_truncated_zip(tmp_path: Path) -> None:
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/METADATA": METADATA * 50})
    data = whl.read_bytes()
    whl.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetadataError):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")


def test_zip_with_corrupt_member_data(tmp_path: Path) -> None:
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/METADATA": METADATA * 50})
    data = bytearray(whl.read_bytes())
    start = data.index(b"METADATA") + len(b"METADATA")
    for i in range(start, start + 40):  # scramble the deflate stream, keep the directory
        data[i] ^= 0xFF
    whl.write_bytes(bytes(data))
    with pytest.raises(MetadataError):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")


def test_not_an_archive(tmp_path: Path) -> None:
    p = tmp_path / "blob"
    p.write_bytes(b"<html>not a wheel</html>")
    for name in ("foo-1.0-py3-none-any.whl", "foo-1.0.tar.gz", "foo-1.0.zip", "foo-1.0.tgz"):
        with pytest.raises(MetadataError):
            read_core_metadata(p, name)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(MetadataError):
        read_core_metadata(p, "foo-1.0.tar.gz")
    with pytest.raises(MetadataError):
        read_core_metadata(tmp_path / "nope", "foo-1.0-py3-none-any.whl")
    with pytest.raises(MetadataError):
        read_core_metadata(tmp_path, "foo-1.0.tar.gz")  # a directory


def test_unsupported_kind(tmp_path: Path) -> None:
    p = make_wheel(tmp_path / "x.egg", {"EGG-INFO/PKG-INFO": METADATA})
    with pytest.raises(MetadataError, match="cannot read metadata"):
        read_core_metadata(p, "foo-1.0-py2.7.egg")


def test_huge_metadata_member(tmp_path: Path) -> None:
    big = b"Name: foo\nVersion: 1\n\n" + b"x" * (md.MAX_METADATA_SIZE + 10)
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/METADATA": big})
    with pytest.raises(MetadataError, match="larger"):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")
    tgz = make_tar(tmp_path / "s.tar.gz", {"foo-1.0/PKG-INFO": big})
    with pytest.raises(MetadataError, match="larger"):
        read_core_metadata(tgz, "foo-1.0.tar.gz")


def test_lying_zip_size_is_still_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The declared size may lie; the read itself is bounded too."""
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/METADATA": METADATA})
    monkeypatch.setattr(md, "MAX_METADATA_SIZE", 50)
    with pytest.raises(MetadataError, match="larger"):
        md._read_capped(io.BytesIO(METADATA), 10, "METADATA")
    with pytest.raises(MetadataError, match="larger"):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")


def test_member_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"foo/{i}.py": b"" for i in range(20)}
    files["foo-1.0.dist-info/METADATA"] = METADATA
    whl = make_wheel(tmp_path / "w.whl", files)
    tgz = make_tar(tmp_path / "s.tar.gz", {f"foo-1.0/{k}": v for k, v in files.items()})
    monkeypatch.setattr(md, "MAX_MEMBERS", 10)
    with pytest.raises(MetadataError, match="more than 10 members"):
        read_core_metadata(whl, "foo-1.0-py3-none-any.whl")
    with pytest.raises(MetadataError, match="more than 10 members"):
        read_core_metadata(tgz, "foo-1.0.tar.gz")


# --- read_core_metadata: sdists -------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "mode"), [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2")]
)
def test_tar_sdist(tmp_path: Path, suffix: str, mode: str) -> None:
    p = make_tar(
        tmp_path / "blob",
        {
            "foo-1.0/setup.py": b"",
            "foo-1.0/foo.egg-info/PKG-INFO": b"Name: wrong\nVersion: 0\n",
            "foo-1.0/PKG-INFO": METADATA,
        },
        mode,
    )
    assert read_core_metadata(p, "foo-1.0" + suffix).raw == METADATA


def test_zip_sdist(tmp_path: Path) -> None:
    p = make_wheel(tmp_path / "s.zip", {"foo-1.0/setup.py": b"", "foo-1.0/PKG-INFO": METADATA})
    assert read_core_metadata(p, "foo-1.0.zip").fields["version"] == "1.0"


def test_sdist_dot_slash_prefix(tmp_path: Path) -> None:
    p = make_tar(tmp_path / "s.tar.gz", {"./foo-1.0/PKG-INFO": METADATA, "./foo-1.0/a": b""})
    assert read_core_metadata(p, "foo-1.0.tar.gz").raw == METADATA


def test_sdist_several_top_dirs_prefers_matching(tmp_path: Path) -> None:
    p = make_tar(
        tmp_path / "s.tar.gz",
        {
            "aaa/PKG-INFO": b"Name: aaa\nVersion: 1\n",
            "foo-1.0/PKG-INFO": METADATA,
            "zzz/x": b"",
        },
    )
    assert read_core_metadata(p, "foo-1.0.tar.gz").raw == METADATA


def test_sdist_egg_info_fallback(tmp_path: Path) -> None:
    p = make_tar(
        tmp_path / "s.tar.gz",
        {"foo-1.0/setup.py": b"", "foo-1.0/foo.egg-info/PKG-INFO": METADATA},
    )
    assert read_core_metadata(p, "foo-1.0.tar.gz").raw == METADATA


def test_sdist_without_pkg_info(tmp_path: Path) -> None:
    p = make_tar(
        tmp_path / "s.tar.gz",
        {"foo-1.0/setup.py": b"", "foo-1.0/a/b/PKG-INFO": METADATA, "PKG-INFO": METADATA},
    )
    with pytest.raises(MetadataError, match="no PKG-INFO"):
        read_core_metadata(p, "foo-1.0.tar.gz")
    z = make_wheel(tmp_path / "s.zip", {"foo-1.0/setup.py": b""})
    with pytest.raises(MetadataError, match="no PKG-INFO"):
        read_core_metadata(z, "foo-1.0.zip")


def test_tar_path_traversal_member_is_only_read(tmp_path: Path) -> None:
    target = tmp_path / "outside"
    p = make_tar(
        tmp_path / "sub.tar.gz",
        {
            "../outside": b"pwned",
            "/etc/evil": b"pwned",
            "foo-1.0/../../outside2": b"pwned",
            "foo-1.0/PKG-INFO": METADATA,
        },
    )
    assert read_core_metadata(p, "foo-1.0.tar.gz").raw == METADATA
    assert not target.exists()
    assert not (tmp_path.parent / "outside2").exists()


def test_tar_pkg_info_symlink_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        link = tarfile.TarInfo("foo-1.0/PKG-INFO")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(MetadataError, match="no PKG-INFO"):
        read_core_metadata(p, "foo-1.0.tar.gz")


def test_truncated_tar(tmp_path: Path) -> None:
    p = make_tar(
        tmp_path / "s.tar.gz",
        {"foo-1.0/big": bytes(range(256)) * 4000, "foo-1.0/PKG-INFO": METADATA},
    )
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetadataError):
        read_core_metadata(p, "foo-1.0.tar.gz")


def test_sdist_metadata_without_name(tmp_path: Path) -> None:
    p = make_tar(tmp_path / "s.tar.gz", {"foo-1.0/PKG-INFO": b"Summary: x\n"})
    with pytest.raises(MetadataError, match=r"foo-1\.0\.tar\.gz: metadata has no Name"):
        read_core_metadata(p, "foo-1.0.tar.gz")


def test_non_utf8_metadata_in_wheel(tmp_path: Path) -> None:
    raw = b"Name: foo\nVersion: 1.0\nAuthor: \xff\xfe\n\n\x80 desc"
    whl = make_wheel(tmp_path / "w.whl", {"foo-1.0.dist-info/METADATA": raw})
    meta = read_core_metadata(whl, "foo-1.0-py3-none-any.whl")
    assert meta.raw == raw
    assert meta.fields["author"] == "\ufffd\ufffd"
    assert meta.fields["description"] == "\ufffd desc"
