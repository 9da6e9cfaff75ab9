"""Issue 16: the web view, driven with requests against the real daemon.

Browsers (Accept preferring text/html) get pages on the URLs clients use for JSON; API
clients, installers and a missing Accept get exactly what they got before; an Accept that
allows neither is 406. Everything taken from uploads (summaries, yank reasons, titles,
descriptions) must come out escaped.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Devpid
from tests.support.pkgbuild import make_wheel
from tests.test_private_index import http_upload, make_doczip, make_index, make_user

CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
BROWSER = {"Accept": CHROME_ACCEPT, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"}
PIP_UA = "pip/23.0 CPython/3.11"
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)

EVIL_SUMMARY = '<script>alert("summary")</script> & more'
EVIL_REASON = "<img src=x onerror=alert('yank')>"
EVIL_TITLE = "<b onmouseover=alert(1)>title</b>"
DESCRIPTION = """\
Evil Demo
=========

Some *emphasis* and a list:

- one
- two

<script>alert("inline")</script>
"""
MARKDOWN = """# Markdown demo

**strong** text <script>alert("md")</script>
<a href="javascript:alert('href')">click</a>
"""


@dataclass
class Site:
    server: Devpid
    user: str
    stage: str
    project: str

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(self.server.url + path, headers=headers, timeout=30,
                            allow_redirects=False)


@pytest.fixture(scope="module")
def site(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """One private index with a release whose texts hold markup: 1.0 yanked, 2.0 not."""
    tmp = tmp_path_factory.mktemp("webview")
    auth = make_user(devpid_server, f"web{uuid.uuid4().hex[:8]}")
    stage = make_index(devpid_server, auth, "dev", title=EVIL_TITLE, bases=["root/pypi"])
    project = f"evil-demo-{uuid.uuid4().hex[:6]}"
    for version in ("1.0", "2.0"):
        wheel = make_wheel(Path(tmp), project, version, summary=EVIL_SUMMARY,
                           requires_python=">=3.8")
        r = http_upload(devpid_server, auth, stage, wheel, name=project, version=version)
        assert r.status_code == 200, r.text
    r = http_upload(devpid_server, auth, stage, None, name=project, version="2.0",
                    action="submit", extra={"summary": EVIL_SUMMARY, "description": DESCRIPTION,
                                            "description_content_type": "text/x-rst",
                                            "home_page": "javascript:alert('home')",
                                            "project_urls": "Source, https://src.test/x"})
    assert r.status_code == 200, r.text
    r = http_upload(devpid_server, auth, stage, None, name=project, version="1.0",
                    action="submit", extra={"summary": EVIL_SUMMARY, "description": MARKDOWN,
                                            "description_content_type": "text/markdown"})
    assert r.status_code == 200, r.text
    r = devpid_server.json("POST", f"/{stage}/{project}/1.0/+yank", auth=auth,
                           json={"reason": EVIL_REASON})
    assert r.status_code == 200, r.text
    docs = make_doczip(Path(tmp) / f"{project}-2.0.doc.zip",
                       {"index.html": b"<html><body><h1>Demo docs</h1></body></html>"})
    r = http_upload(devpid_server, auth, stage, docs, name=project, version="2.0",
                    action="doc_upload")
    assert r.status_code == 200, r.text
    (wheel_link,) = [link for link in devpid_server.json(
        "GET", f"/{stage}/{project}/2.0").json()["result"]["+links"]
        if link["rel"] == "releasefile"]
    r = requests.post(wheel_link["href"], json={"reportversion": "1", "testenvs": {}},
                      headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    return Site(devpid_server, auth[0], stage, project)


def _paths(site: Site) -> list[str]:
    return ["/", f"/{site.user}", f"/{site.stage}", f"/{site.stage}/{site.project}",
            f"/{site.stage}/{site.project}/2.0"]


def test_browsers_get_pages(site: Site) -> None:
    for path in _paths(site):
        for shape in (path, path.rstrip("/") + "/"):
            r = site.get(shape, **BROWSER)
            assert r.status_code == 200, (shape, r.status_code, r.text[:300])
            assert r.headers["Content-Type"] == "text/html; charset=utf-8", shape
            assert r.text.startswith("<!DOCTYPE html>"), shape
            assert "script-src" not in r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "Accept" in r.headers["Vary"]
        json_answer = site.get(path, Accept="application/json")
        assert "Accept" in json_answer.headers.get("Vary", ""), path  # caches must tell
    project = site.get(f"/{site.stage}/{site.project}", **BROWSER).text
    assert "2.0" in project and "1.0" in project and ".whl" in project
    assert "&gt;=3.8" in project  # requires-python, escaped
    assert "yanked" in project
    assert f'href="{site.server.url}/{site.stage}/{site.project}/2.0/+docs"' in project
    assert ".whl.toxresult-" in project and ">tox result 1</a>" in project
    framed = site.get(f"/{site.stage}/{site.project}/2.0/+docs", **BROWSER)
    assert framed.status_code == 200
    assert f'<iframe src="{site.server.url}/{site.stage}/{site.project}/2.0/+doc/"' in framed.text
    assert "Demo docs" in site.get(f"/{site.stage}/{site.project}/2.0/+doc/", **BROWSER).text


def test_clients_keep_getting_json(site: Site) -> None:
    expected = ["list:userconfig", "userconfig", "indexconfig", "projectconfig", "versiondata"]
    for path, kind in zip(_paths(site), expected, strict=True):
        for accept in ("application/json", "*/*", None,
                       "text/html;q=0.5, application/json"):
            headers = {"Accept": accept} if accept else {}
            r = requests.get(site.server.url + path, headers=headers, timeout=30)
            assert r.status_code == 200, (path, accept, r.text[:200])
            assert r.headers["Content-Type"] == "application/json", (path, accept)
            assert r.json()["type"] == kind, (path, accept)


def test_browsers_get_pages_installers_do_not(site: Site) -> None:
    """pip's user agent (even with a browser's Accept) gets simple pages, never the view."""
    assert site.get(f"/{site.stage}", **BROWSER).headers["Content-Type"].startswith("text/html")
    for path in (f"/{site.stage}", f"/{site.stage}/{site.project}",
                 f"/{site.stage}/+simple/{site.project}/"):
        r = site.get(path, **{"User-Agent": PIP_UA, "Accept": PIP_ACCEPT})
        assert r.status_code == 200, path
        assert r.headers["Content-Type"] == "application/vnd.pypi.simple.v1+json", path
        r = site.get(path, **{"User-Agent": PIP_UA, "Accept": CHROME_ACCEPT})
        assert r.status_code == 200, path
        assert "links for" in r.text or "simple list" in r.text, path
        assert "Content-Security-Policy" not in r.headers, path
    # a browser on +simple/ sees the plain simple page, as before
    r = site.get(f"/{site.stage}/+simple/{site.project}/", **BROWSER)
    assert r.status_code == 200 and "links for" in r.text
    assert "Content-Security-Policy" not in r.headers


def test_unacceptable_accept_is_406(site: Site) -> None:
    for path in _paths(site):
        r = site.get(path, Accept="image/png")
        assert r.status_code == 406, (path, r.status_code)
        assert r.headers["Content-Type"] == "application/json"
        assert "text/html or application/json" in r.json()["message"]
    # the project view used to answer 415 to anything but application/json
    r = site.get(f"/{site.stage}/{site.project}", Accept="text/plain")
    assert r.status_code == 406


def test_markup_from_uploads_is_escaped(site: Site) -> None:
    bodies = [site.get(path, **BROWSER).text for path in _paths(site)]
    everything = "\n".join(bodies)
    assert "<script" not in everything.lower()
    assert "onerror=" not in everything.replace("onerror=alert(&#x27;", "")
    assert "<b onmouseover" not in everything
    assert "&lt;script&gt;alert(&quot;summary&quot;)&lt;/script&gt; &amp; more" in bodies[3]
    assert "&lt;img src=x onerror=alert(&#x27;yank&#x27;)&gt;" in bodies[3]
    assert "&lt;b onmouseover=alert(1)&gt;title&lt;/b&gt;" in bodies[2]


def test_long_description_is_rendered_and_sanitised(site: Site) -> None:
    body = site.get(f"/{site.stage}/{site.project}/2.0", **BROWSER).text
    assert "<em>emphasis</em>" in body
    assert "<li><p>one</p></li>" in body
    assert "&lt;script&gt;alert(“inline”)&lt;/script&gt;" in body
    markdown = site.get(f"/{site.stage}/{site.project}/1.0", **BROWSER).text
    assert "<strong>strong</strong>" in markdown
    # metadata URLs: http(s) become links, anything else stays text
    assert '<a href="https://src.test/x" rel="nofollow noopener">Source</a>' in body
    assert 'href="javascript:' not in body and "Homepage: javascript:alert" in body
    assert "<script" not in markdown and "javascript:" not in markdown
    again = site.get(f"/{site.stage}/{site.project}/2.0", **BROWSER).text
    assert again.count("<em>emphasis</em>") == 1


def test_home_page_says_where_to_go(site: Site) -> None:
    body = site.get("/", **BROWSER).text
    simple = f"{site.server.url}/root/pypi/+simple/"
    assert f"index-url = {simple}" in body  # pip.conf
    assert f'url = &quot;{simple}&quot;' in body  # uv.toml
    assert f"pip install --index-url {simple}" in body
    assert f'href="{site.server.url}/{site.stage}"' in body
    assert "serial" in body and "root/pypi" in body
    # the outside URL a proxy announces is what the snippets show
    r = site.get("/", **BROWSER, **{"X-Outside-Url": "https://pkgs.example.test/devpi"})
    assert "index-url = https://pkgs.example.test/devpi/root/pypi/+simple/" in r.text


def test_html_errors_and_redirects(site: Site) -> None:
    r = site.get(f"/{site.user}/nosuchindex", **BROWSER)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    assert "could not be found" in r.text
    r = site.get(f"/{site.stage}/{site.project.upper().replace('-', '_')}", **BROWSER)
    assert r.status_code == 302
    assert r.headers["Location"].endswith(f"/{site.stage}/{site.project}")
    # the internal route is not reachable from outside
    assert site.get("/+html/", **BROWSER).status_code == 404


def _search(server: Devpid, query: str) -> list[dict[str, str]]:
    r = requests.get(server.url + "/+search", params={"q": query},
                     headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "search"
    hits: list[dict[str, str]] = r.json()["result"]
    return hits


def test_search_by_name_summary_and_description(site: Site) -> None:
    suffix = site.project.rsplit("-", 1)[1]
    for words in (suffix, f"evil demo {suffix}", "emphasis " + suffix, "summary more " + suffix):
        hits = [h for h in _search(site.server, words) if h["stage"] == site.stage]
        assert [h["name"] for h in hits] == [site.project], words
        assert hits[0]["version"] == "2.0" and hits[0]["summary"] == EVIL_SUMMARY
    assert _search(site.server, "nosuchwordanywhere") == []
    # FTS5 syntax is not passed through: OR is a word (AND-ed), quotes and stars are dropped
    assert _search(site.server, f'"{suffix}*" OR (zzqq{uuid.uuid4().hex})') == []
    page = requests.get(site.server.url + "/+search", params={"q": f"<script> {suffix}"},
                        headers=BROWSER, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text.lower()
    assert "&lt;script&gt; " + suffix in page.text  # the query, echoed escaped
    assert f'href="{site.server.url}/{site.stage}/{site.project}"' in page.text


def test_search_is_kept_current_by_serial(devpid_server: Devpid, tmp_path: Path) -> None:
    auth = make_user(devpid_server, f"srch{uuid.uuid4().hex[:8]}")
    stage = make_index(devpid_server, auth, "dev")
    word = f"quokka{uuid.uuid4().hex[:6]}"
    assert _search(devpid_server, word) == []
    wheel = make_wheel(tmp_path, f"{word}-tools", "1.0", summary="first summary")
    assert http_upload(devpid_server, auth, stage, wheel, name=f"{word}-tools",
                       version="1.0").status_code == 200
    hits = _search(devpid_server, word)
    assert [(h["name"], h["stage"], h["summary"]) for h in hits] == [
        (f"{word}-tools", stage, "first summary")]
    r = devpid_server.json("DELETE", f"/{stage}", auth=auth)
    assert r.status_code == 201, r.text
    assert _search(devpid_server, word) == []


def test_search_finds_mirror_names(start_devpid: Any, upstream: Any) -> None:
    name = f"zebrafish-{uuid.uuid4().hex[:6]}"
    upstream.publish(name, "1.0")
    server = start_devpid(upstream_url=upstream.url)
    deadline = time.monotonic() + 20
    hits: list[dict[str, str]] = []
    while time.monotonic() < deadline:  # the list is fetched and indexed in the background
        hits = _search(server, name.split("-")[1])
        if hits:
            break
        time.sleep(0.2)
    assert [(h["name"], h["stage"], h["mirror"]) for h in hits] == [(name, "root/pypi", True)]
    assert [h["name"] for h in _search(server, "zebrafish")].count(name) == 1


def test_mirror_project_page(devpid_server: Devpid, upstream: Any) -> None:
    """A project only upstream: its page lists the mirror's files, yanked with the reason."""
    name = f"upstream-only-{uuid.uuid4().hex[:6]}"
    upstream.publish(name, "1.0", requires_python=">=3.9")
    upstream.publish(name, "1.1")
    upstream.yank(f"{name.replace('-', '_')}-1.1-py3-none-any.whl", "<i>broken</i> build")
    r = requests.get(f"{devpid_server.url}/root/pypi/{name}", headers=BROWSER, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f"{name.replace('-', '_')}-1.0-py3-none-any.whl" in r.text
    assert "&lt;i&gt;broken&lt;/i&gt; build" in r.text and "<i>broken" not in r.text
    assert "&gt;=3.9" in r.text
    version = requests.get(f"{devpid_server.url}/root/pypi/{name}/1.0", headers=BROWSER,
                           timeout=30)
    assert version.status_code == 200 and "&gt;=3.9" in version.text
    index = requests.get(f"{devpid_server.url}/root/pypi", headers=BROWSER, timeout=30)
    assert index.status_code == 200 and f">{name}</a>" in index.text  # cached now
    missing = requests.get(f"{devpid_server.url}/root/pypi/no-such-{name}", headers=BROWSER,
                           timeout=30)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("text/html")
    home = requests.get(devpid_server.url + "/", headers=BROWSER, timeout=30).text
    assert "reachable</span>" in home


def test_unreachable_upstream_shows_on_the_pages(start_devpid: Any) -> None:
    server = start_devpid("--request-timeout", "1", upstream_url="http://127.0.0.1:9/simple/")
    r = requests.get(server.url + "/root/pypi/anything", headers=BROWSER, timeout=30)
    assert r.status_code in (502, 503, 504), r.status_code
    assert r.headers["Content-Type"].startswith("text/html")
    home = requests.get(server.url + "/", headers=BROWSER, timeout=30).text
    assert "backing off</span>" in home or "failing</span>" in home


def test_home_page_of_a_replica_shows_its_lag(start_devpid: Any, tmp_path: Path) -> None:
    secret = tmp_path / "replication.secret"
    secret.write_bytes(uuid.uuid4().bytes * 2)
    secret.chmod(0o600)
    primary = start_devpid("--secretfile", str(secret), name="primary")
    replica = start_devpid("--primary-url", primary.url, "--secretfile", str(secret),
                           init=False, name="replica")
    deadline = time.monotonic() + 20
    body = ""
    while time.monotonic() < deadline:  # the replica copies the primary, then is in sync
        body = requests.get(replica.url + "/", headers=BROWSER, timeout=30).text
        if "in sync" in body:
            break
        time.sleep(0.2)
    assert f"Replica of</strong> {primary.url}" in body
    assert "in sync" in body and "replica" in body


def test_project_page_lists_files_of_the_newest_versions(devpid_server: Devpid,
                                                         tmp_path: Path) -> None:
    auth = make_user(devpid_server, f"many{uuid.uuid4().hex[:8]}")
    stage = make_index(devpid_server, auth, "dev")
    project = f"many-{uuid.uuid4().hex[:6]}"
    for minor in range(22):
        wheel = make_wheel(tmp_path, project, f"1.{minor}")
        assert http_upload(devpid_server, auth, stage, wheel, name=project,
                           version=f"1.{minor}").status_code == 200
    body = requests.get(f"{devpid_server.url}/{stage}/{project}", headers=BROWSER,
                        timeout=30).text
    stem = project.replace("-", "_")
    assert f"{stem}-1.21-py3-none-any.whl" in body and f"{stem}-1.2-py3-none-any.whl" in body
    assert f"{stem}-1.1-py3-none-any.whl" not in body  # on its version page instead
    assert ">1.1</a>" in body and ">1.0</a>" in body  # every version is listed
    assert "Files of older versions are on their version pages." in body
    version = requests.get(f"{devpid_server.url}/{stage}/{project}/1.1", headers=BROWSER,
                           timeout=30).text
    assert f"{stem}-1.1-py3-none-any.whl" in version


def test_json_project_view_of_a_mirror_project_not_cached_yet(devpid_server: Devpid,
                                                               upstream: Any) -> None:
    """It answered 404 until an installer had fetched the project (the web view shares the
    fix: both ask the mirrors first)."""
    name = f"json-first-{uuid.uuid4().hex[:6]}"
    upstream.publish(name, "3.1")
    r = devpid_server.json("GET", f"/root/pypi/{name}")
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "projectconfig" and list(r.json()["result"]) == ["3.1"]
    other = f"json-first-{uuid.uuid4().hex[:6]}"
    upstream.publish(other, "0.9")
    r = requests.get(f"{devpid_server.url}/root/pypi/pypi/{other}/json", timeout=30)
    assert r.status_code == 200 and r.json()["info"]["version"] == "0.9"


def test_credentials_in_configs_are_shown_only_to_owner_and_root(devpid_server: Devpid,
                                                                 upstream: Any) -> None:
    """As in the JSON API (devpid/redact.py): mirror_url's user:password and query are masked
    for everyone but the owner and root."""
    from tests.conftest import ROOT_PASSWORD

    stage = f"root/cred{uuid.uuid4().hex[:6]}"
    secret_url = upstream.url.replace("://", "://mirroruser:hunter2@") + "?token=s3cr3t"
    r = devpid_server.json("PUT", f"/{stage}", auth=("root", ROOT_PASSWORD),
                           json={"type": "mirror", "mirror_url": secret_url})
    assert r.status_code == 200, r.text
    for path in (f"/{stage}", "/root", "/"):
        anonymous = requests.get(devpid_server.url + path, headers=BROWSER, timeout=30).text
        assert "hunter2" not in anonymous and "s3cr3t" not in anonymous, path
    shown = requests.get(devpid_server.url + f"/{stage}", headers=BROWSER, timeout=30).text
    assert "***@" in shown
    as_root = requests.get(devpid_server.url + f"/{stage}", headers=BROWSER, timeout=30,
                           auth=("root", ROOT_PASSWORD)).text
    assert "hunter2" in as_root
