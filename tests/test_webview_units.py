"""Pure pieces of the web view: escaping helpers and the FTS5 query builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from devpid.store import open_store
from devpid.web.html.markup import e, external_link, size
from devpid.web.html.search import SearchDB, fts_query


def test_escaping_helpers() -> None:
    assert e('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert e(None) == ""
    assert e(e("<b>")) == "&lt;b&gt;"  # escaped once, not twice
    assert external_link("javascript:alert(1)", "Home") == "Home: javascript:alert(1)"
    assert external_link("data:text/html,<b>") == "data:text/html,&lt;b&gt;"
    assert external_link("https://x.test/?a=1&b=<2>", "Src") == (
        '<a href="https://x.test/?a=1&amp;b=&lt;2&gt;" rel="nofollow noopener">Src</a>')
    assert size(1536) == "1.5 KiB" and size(12) == "12 B" and size(None) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Django REST", '"django"* AND "rest"*'),
        ("a", '"a"'),
        ('"*) OR name:(x', '"or"* AND "name"* AND "x"'),
        ("  --  ", None),
        ("", None),
    ],
)
def test_fts_query_passes_no_syntax(text: str, expected: str | None) -> None:
    assert fts_query(text) == expected


def test_search_db_indexes_serials_and_lists(tmp_path: Path) -> None:
    """Catch-up follows the changelog; a mirror list is indexed once per distinct list."""
    store, _ = open_store(tmp_path)
    with store.transaction() as tx:
        tx.set("project/u/dev/frob-nicator", {"name": "frob-nicator"})
        tx.set("release/u/dev/frob-nicator/1.0", {"summary": "frobs widgets"})
        tx.set("release/u/dev/frob-nicator/2.0", {"summary": "frobs gadgets",
                                                   "description": "long quixotic text"})
    db = SearchDB(tmp_path / "web-search.sqlite", store.path)
    assert db.catch_up(store.uuid) == store.serial
    (hit,) = db.query("gadgets")
    assert (hit.name, hit.stage, hit.version, hit.mirror) == ("frob-nicator", "u/dev", "2.0", False)
    assert [h.name for h in db.query("quixotic")] == ["frob-nicator"]
    assert db.query("widgets") == []  # only the latest release's summary
    with store.transaction() as tx:
        tx.delete("index/u/dev")
        tx.set("index/u/dev", {"type": "stage"})
        tx.delete("release/u/dev/frob-nicator/2.0")
    db.catch_up(store.uuid)
    assert [h.summary for h in db.query("frob")] == ["frobs widgets"]
    db.index_list("root/pypi", "frob\nfrob-nicator\nother-thing")
    assert [(h.name, h.mirror) for h in db.query("frob nicator")] == [
        ("frob-nicator", False), ("frob-nicator", True)]
    assert db.query("frob")[0].name == "frob"  # the exact name first
    marker = db.list_marker("root/pypi")
    db.index_list("root/pypi", "frob\nfrob-nicator\nother-thing")
    assert db.list_marker("root/pypi") == marker
    db.index_list("root/pypi", "other-thing")
    assert [h.name for h in db.query("frob") if h.mirror] == []
    db.close()
    store.close()


def test_two_processes_share_the_search_db(tmp_path: Path) -> None:
    """--workers: each process catches up on the same database; no duplicate rows."""
    store, _ = open_store(tmp_path)
    with store.transaction() as tx:
        tx.set("project/u/dev/shared-thing", {"name": "shared-thing"})
        tx.set("release/u/dev/shared-thing/1.0", {"summary": "one"})
    first = SearchDB(tmp_path / "web-search.sqlite", store.path)
    second = SearchDB(tmp_path / "web-search.sqlite", store.path)
    assert first.catch_up(store.uuid) == store.serial
    with store.transaction() as tx:
        tx.set("release/u/dev/shared-thing/2.0", {"summary": "two"})
    assert second.catch_up(store.uuid) == store.serial
    assert first.catch_up(store.uuid) == store.serial  # nothing left to do
    assert [(h.name, h.summary) for h in first.query("shared")] == [("shared-thing", "two")]
    assert [(h.name, h.summary) for h in second.query("shared")] == [("shared-thing", "two")]
    for db in (first, second):
        db.close()
    store.close()
