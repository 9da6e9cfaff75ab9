"""The simple API of a private index, checked by parsing what the daemon sends.

PEP 503 HTML, PEP 691 JSON (api-version 1.1 with PEP 700 fields), PEP 658 metadata,
PEP 592 yanks; relative links for every URL shape; ETags; name normalisation.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest
import requests

from tests.conftest import Devpid
from tests.support.pkgbuild import make_sdist, make_wheel, metadata_bytes
from tests.test_private_index import (
    PIP_UA,
    SIMPLE_JSON,
    http_upload,
    make_index,
    make_user,
    sha256_file,
    upload_ok,
)

NAME = "Simple.Pkg"  # normalises to simple-pkg
PROJECT = "simple-pkg"
RP = "<4,>=3.8"
YANK_REASON = 'bad <b>"build"</b> & more'
UV_UA = {"User-Agent": "uv/0.5.0 {}"}
BROWSER = {"User-Agent": "Mozilla/5.0", "Accept": "text/html"}


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.texts: list[str] = []
        self._in_a = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))
            self._in_a = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_a = False

    def handle_data(self, data: str) -> None:
        if self._in_a:
            self.texts.append(data)


def anchors(text: str) -> list[dict[str, str | None]]:
    parser = Anchors()
    parser.feed(text)
    return parser.anchors


@dataclass
class Site:
    server: Devpid
    auth: tuple[str, str]
    stage: str
    files: dict[str, Path]  # filename -> local file

    def url(self, path: str = "") -> str:
        return f"{self.server.url}/{self.stage}/{path}"


@pytest.fixture(scope="module")
def site(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Site:
    d = tmp_path_factory.mktemp("simple-dists")
    built = [
        (make_wheel(d, NAME, "1.0", summary="one"), "1.0"),
        (make_sdist(d, NAME, "1.0", summary="one"), "1.0"),
        (make_wheel(d, NAME, "2.0", requires_python=RP), "2.0"),
        (make_wheel(d, NAME, "1.5"), "1.5"),
        (make_wheel(d, "Second_Pkg", "0.1"), "0.1"),
    ]
    auth = make_user(devpid_server, f"simple{uuid.uuid4().hex[:8]}")
    stage = make_index(devpid_server, auth, "dev")
    for path, version in built:
        name = "Second_Pkg" if path.name.lower().startswith("second") else NAME
        upload_ok(devpid_server, auth, stage, path, name, version)
    r = devpid_server.json("POST", f"/{stage}/{PROJECT}/1.5/+yank", auth=auth,
                           json={"reason": YANK_REASON})
    assert r.status_code == 200, r.text
    return Site(devpid_server, auth, stage, {p.name: p for p, _ in built})


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30, allow_redirects=False)


def is_rfc3339(value: str) -> bool:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None and "T" in value


def test_pep691_project_json(site: Site) -> None:
    page_url = site.url(f"+simple/{PROJECT}/")
    r = get(page_url, Accept=SIMPLE_JSON)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == SIMPLE_JSON
    data = r.json()
    assert data["meta"]["api-version"] == "1.1"
    assert data["name"] == PROJECT
    assert data["versions"] == ["1.0", "1.5", "2.0"]
    own = [f for f in data["files"] if f["filename"] in site.files]
    assert sorted(f["filename"] for f in own) == sorted(
        n for n in site.files if not n.lower().startswith("second"))
    for f in data["files"]:
        local = site.files[f["filename"]]
        assert f["hashes"] == {"sha256": sha256_file(local)}
        assert f["size"] == local.stat().st_size
        assert is_rfc3339(f["upload-time"]), f["upload-time"]
        body = requests.get(urljoin(page_url, f["url"]), timeout=30)
        assert body.status_code == 200 and body.content == local.read_bytes()
        if f["filename"].endswith(".whl"):
            meta = requests.get(urljoin(page_url, f["url"]) + ".metadata", timeout=30)
            assert meta.status_code == 200
            assert f["core-metadata"] == {"sha256": hashlib.sha256(meta.content).hexdigest()}
            assert f["dist-info-metadata"] == f["core-metadata"]
            version = f["filename"].split("-")[1]
            expected = metadata_bytes(NAME, version, RP if version == "2.0" else None,
                                      summary="one" if version == "1.0" else "")
            assert meta.content == expected
        else:
            assert "core-metadata" not in f
            meta = requests.get(urljoin(page_url, f["url"]) + ".metadata", timeout=30)
            assert meta.status_code == 404
    by_name = {f["filename"]: f for f in data["files"]}
    assert by_name["simple_pkg-2.0-py3-none-any.whl"]["requires-python"] == RP
    assert "requires-python" not in by_name["simple_pkg-1.0-py3-none-any.whl"]
    assert by_name["simple_pkg-1.5-py3-none-any.whl"]["yanked"] == YANK_REASON
    assert "yanked" not in by_name["simple_pkg-2.0-py3-none-any.whl"]


def test_pep503_project_html(site: Site) -> None:
    page_url = site.url(f"+simple/{PROJECT}/")
    r = get(page_url, **BROWSER)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    text = r.text
    assert 'data-requires-python="&lt;4,&gt;=3.8"' in text
    assert 'data-yanked="bad &lt;b&gt;&quot;build&quot;&lt;/b&gt; &amp; more"' in text
    found = {a["href"].split("#")[0].rsplit("/", 1)[1]: a for a in anchors(text)
             if a.get("href")}
    assert set(found) == {n for n in site.files if not n.lower().startswith("second")}
    new = found["simple_pkg-2.0-py3-none-any.whl"]
    assert new["data-requires-python"] == RP
    assert "data-yanked" not in new
    assert found["simple_pkg-1.5-py3-none-any.whl"]["data-yanked"] == YANK_REASON
    for filename, a in found.items():
        url, fragment = urldefrag(urljoin(page_url, a["href"] or ""))
        assert fragment == f"sha256={sha256_file(site.files[filename])}"
        if filename.endswith(".whl"):
            meta = requests.get(url + ".metadata", timeout=30).content
            assert a["data-core-metadata"] == f"sha256={hashlib.sha256(meta).hexdigest()}"
            assert a["data-dist-info-metadata"] == a["data-core-metadata"]
        else:
            assert "data-core-metadata" not in a


@pytest.mark.parametrize(
    ("shape", "headers"),
    [
        ("+simple/{p}/", {}),
        ("+simple/{p}/", PIP_UA),
        ("+simple/{p}", PIP_UA),
        ("+simple/{p}", UV_UA),
        ("+simple/{p}", {"Accept": SIMPLE_JSON}),
        ("{p}/", PIP_UA),
        ("{p}", PIP_UA),
    ],
)
def test_relative_links_resolve_for_every_url_shape(
    site: Site, shape: str, headers: dict[str, str]
) -> None:
    page_url = site.url(shape.format(p=PROJECT))
    for accept in ("text/html", SIMPLE_JSON):
        r = get(page_url, **{"Accept": accept, **headers})
        assert r.status_code == 200, (page_url, r.status_code, r.text)
        if r.headers["Content-Type"] == SIMPLE_JSON:
            links = [(f["url"], f["hashes"]["sha256"]) for f in r.json()["files"]]
        else:
            links = []
            for a in anchors(r.text):
                href, fragment = urldefrag(a["href"] or "")
                links.append((href, fragment.removeprefix("sha256=")))
        assert len(links) == 4
        for href, sha in links:
            assert not href.startswith(("http:", "/")), href
            absolute = urljoin(page_url, href)
            assert absolute.startswith(site.url("+f/")), (page_url, href, absolute)
            body = requests.get(absolute, timeout=30)
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == sha


def test_percent_encoded_plus_f_and_file_headers(site: Site) -> None:
    data = get(site.url(f"+simple/{PROJECT}/"), Accept=SIMPLE_JSON).json()
    f = next(f for f in data["files"] if f["filename"] == "simple_pkg-1.0-py3-none-any.whl")
    url = urljoin(site.url(f"+simple/{PROJECT}/"), f["url"])
    local = site.files[f["filename"]].read_bytes()
    encoded = url.replace("/+f/", "/%2Bf/")
    assert encoded != url
    r = get(encoded)
    assert r.status_code == 200 and r.content == local
    assert r.headers["Cache-Control"] == "max-age=365000000, immutable, public"
    assert int(r.headers["Content-Length"]) == len(local)
    assert get(encoded.replace("%2Bf", "%2bf")).content == local
    assert get(encoded + ".metadata").status_code == 200
    head = requests.head(url, timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(local)
    # a range request (uv and pip use them for lazy wheels)
    r = get(url, Range="bytes=0-9")
    assert r.status_code == 206 and r.content == local[:10]
    assert r.headers["Content-Range"] == f"bytes 0-9/{len(local)}"
    # conditional GET of an immutable file
    assert get(url, **{"If-None-Match": r.headers["ETag"]}).status_code == 304
    # JSON meta about a file
    r = get(url, Accept="application/json")
    assert r.json()["result"]["hashes"]["sha256"] == f["hashes"]["sha256"]
    # unknown files
    assert get(url.replace(f["filename"], "simple_pkg-9.9-py3-none-any.whl")).status_code == 404
    assert get(site.url("+f/../../../etc/passwd")).status_code in (400, 404)


def test_non_normalised_names_redirect(site: Site) -> None:
    for raw in ("Simple.Pkg", "simple_pkg", "SIMPLE-pkg", "simple..pkg"):
        r = get(site.url(f"+simple/{raw}/"), Accept=SIMPLE_JSON)
        assert r.status_code in (301, 302, 308), (raw, r.status_code)
        assert r.headers["Location"] == site.url(f"+simple/{PROJECT}/")
        r = get(site.url(f"+simple/{raw}"), **PIP_UA)
        assert r.status_code in (301, 302, 308)
        assert r.headers["Location"] == site.url(f"+simple/{PROJECT}/")
        r = get(site.url(f"{raw}/"), **PIP_UA)
        assert r.status_code in (301, 302, 308)
        assert r.headers["Location"].rstrip("/") == site.url(PROJECT)
    # browsers get the slash URL
    r = get(site.url(f"+simple/{PROJECT}"), **BROWSER)
    assert r.status_code in (301, 302, 308)
    assert r.headers["Location"] == site.url(f"+simple/{PROJECT}/")
    # followed by a client, the redirect lands on the page
    r = requests.get(site.url("+simple/Simple_Pkg/"), headers={"Accept": SIMPLE_JSON},
                     timeout=30)
    assert r.status_code == 200 and r.json()["name"] == PROJECT
    r = get(site.url("+simple/no-such-project/"), Accept=SIMPLE_JSON)
    assert r.status_code == 404
    assert "does not exist" in r.json()["message"]


def test_etag_and_conditional_requests(site: Site, tmp_path: Path) -> None:
    url = site.url("+simple/second-pkg/")
    r1 = get(url, Accept=SIMPLE_JSON)
    etag = r1.headers["ETag"]
    assert "Accept" in r1.headers["Vary"]
    r2 = get(url, Accept=SIMPLE_JSON, **{"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b""
    assert r2.headers["ETag"] == etag
    html_etag = get(url, Accept="text/html").headers["ETag"]
    assert html_etag != etag  # distinct representations never share a validator
    assert get(url, Accept="text/html", **{"If-None-Match": etag}).status_code == 200
    # a new upload changes the page and its ETag
    upload_ok(site.server, site.auth, site.stage,
              make_wheel(tmp_path, "Second_Pkg", "0.2"), "Second_Pkg", "0.2")
    r3 = get(url, Accept=SIMPLE_JSON, **{"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["ETag"] != etag
    assert r3.json()["versions"] == ["0.1", "0.2"]
    # project list ETags too
    lst = site.url("+simple/")
    etag = get(lst, Accept=SIMPLE_JSON).headers["ETag"]
    assert get(lst, Accept=SIMPLE_JSON, **{"If-None-Match": etag}).status_code == 304


def test_format_query_parameter(site: Site) -> None:
    url = site.url(f"+simple/{PROJECT}/")
    r = get(url + "?format=application/vnd.pypi.simple.v1+json", **BROWSER)
    assert r.status_code == 200 and r.headers["Content-Type"] == SIMPLE_JSON
    assert r.json()["name"] == PROJECT
    r = get(url + "?format=application/vnd.pypi.simple.v1%2Bjson", **BROWSER)
    assert r.headers["Content-Type"] == SIMPLE_JSON
    r = get(url + "?format=application/vnd.pypi.simple.v1+html", Accept=SIMPLE_JSON)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/vnd.pypi.simple.v1+html"
    assert len(anchors(r.text)) == 4
    r = get(site.url("+simple/") + "?format=application/vnd.pypi.simple.v1+json")
    assert r.headers["Content-Type"] == SIMPLE_JSON
    # pip's and uv's Accept headers get JSON
    pip_accept = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
                  "q=0.1, text/html; q=0.01")
    assert get(url, Accept=pip_accept, **PIP_UA).headers["Content-Type"] == SIMPLE_JSON


def test_project_list_json_and_html(site: Site) -> None:
    for url in (site.url("+simple/"), site.url("+simple")):
        r = get(url, Accept=SIMPLE_JSON)
        assert r.status_code == 200 and r.headers["Content-Type"] == SIMPLE_JSON
        data = r.json()
        assert data["meta"]["api-version"] == "1.1"
        assert sorted(p["name"] for p in data["projects"]) == ["second-pkg", PROJECT]
    # the index URL itself answers PEP 691 clients and installers with the list
    r = get(site.url().rstrip("/"), Accept=SIMPLE_JSON)
    assert r.status_code == 200 and r.headers["Content-Type"] == SIMPLE_JSON
    assert len(r.json()["projects"]) == 2
    list_url = site.url("+simple/")
    r = get(list_url, Accept="text/html")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    hrefs = sorted(a["href"] or "" for a in anchors(r.text))
    assert hrefs == ["second-pkg/", f"{PROJECT}/"]
    for href in hrefs:
        page = get(urljoin(list_url, href), Accept=SIMPLE_JSON)
        assert page.status_code == 200
    # browsers asking without the slash are sent to it
    r = get(site.url("+simple"), **BROWSER)
    assert r.status_code in (301, 302, 308)
    assert r.headers["Location"] == list_url
    # an unknown index
    r = get(f"{site.server.url}/nobody-{uuid.uuid4().hex[:6]}/none/+simple/", Accept=SIMPLE_JSON)
    assert r.status_code == 404


def test_upload_and_simple_page_agree_on_every_field(site: Site, tmp_path: Path) -> None:
    """A fresh upload shows up at once (no stale cached page) with all PEP 700 fields."""
    name = f"fresh-{uuid.uuid4().hex[:6]}"
    url = site.url(f"+simple/{name}/")
    assert get(url, Accept=SIMPLE_JSON).status_code == 404
    wheel = make_wheel(tmp_path, name, "1.0", requires_python=">=3.8")
    r = http_upload(site.server, site.auth, site.stage, wheel, name=name, version="1.0")
    assert r.status_code == 200, r.text
    serial = int(r.headers["X-Devpi-Serial"])
    data = get(url, Accept=SIMPLE_JSON).json()
    assert data["meta"]["_last-serial"] >= serial
    (f,) = data["files"]
    assert f["filename"] == wheel.name
    assert f["requires-python"] == ">=3.8"
    assert f["size"] == wheel.stat().st_size
    names = [p["name"] for p in get(site.url("+simple/"), Accept=SIMPLE_JSON).json()["projects"]]
    assert name in names



def test_pypi_style_json_api(devpid_server: Devpid, alice: tuple[str, str], tmp_path: Path,
                             env: dict[str, str]) -> None:
    from tests.conftest import run, tool
    from tests.support.pkgbuild import make_wheel

    user, pw = alice
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={}).ok
    for version in ("1.0", "2.0", "3.0b1"):
        wheel = make_wheel(tmp_path, "Json_Api", version, summary="json view",
                           requires_python=">=3.8")
        run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/dev/",
             "-u", user, "-p", pw, str(wheel)], env)
    data = requests.get(f"{devpid_server.url}/{user}/dev/pypi/Json.Api/json").json()
    assert data["info"]["version"] == "2.0" and data["info"]["summary"] == "json view"
    assert set(data["releases"]) == {"1.0", "2.0", "3.0b1"}
    (url,) = data["urls"]
    assert url["digests"]["sha256"] and url["packagetype"] == "bdist_wheel"
    assert requests.get(url["url"]).ok
    one = requests.get(f"{devpid_server.url}/{user}/dev/pypi/json-api/1.0/json").json()
    assert one["info"]["version"] == "1.0" and one["releases"] == {}
    missing = requests.get(f"{devpid_server.url}/{user}/dev/pypi/json-api/9.9/json")
    assert missing.status_code == 404
