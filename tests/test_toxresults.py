"""Tox results: ``devpi test`` runs tox on a package from the index and posts the report to the
release file; ``devpi list -t`` shows it; push copies it; deleting the file deletes it; and the
bad posts get clear 4xx answers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from devpid.web.toxresults import (
    MAX_TOXRESULT_BYTES,
    MAX_TOXRESULTS_BYTES_PER_FILE,
    MAX_TOXRESULTS_PER_FILE,
)
from tests.conftest import Devpid, client_env, import_store_args, run, tool, twine_upload
from tests.support.pkgbuild import make_sdist, make_wheel
from tests.test_private_index import devpi, make_index, make_user

TOX_INI = b"""[tox]
envlist = py

[testenv]
commands = python -c "import tested_pkg; print('imported', tested_pkg.__name__)"
"""


def _versiondata(server: Devpid, stage: str, project: str, version: str) -> dict[str, Any]:
    r = server.json("GET", f"/{stage}/{project}/{version}")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["result"]
    return result


def _links(data: dict[str, Any], rel: str) -> list[dict[str, Any]]:
    return [link for link in data["+links"] if link["rel"] == rel]


@pytest.fixture(scope="module")
def tested(devpid_server: Devpid, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tested-pkg 1.0 (wheel + sdist with a tox.ini) on a fresh index, run by ``devpi test``."""
    tmp = tmp_path_factory.mktemp("tox")
    env = client_env(tmp / "client")
    env["VIRTUALENV_NO_PERIODIC_UPDATE"] = "1"  # never reach for the network
    # devpi test finds tox on PATH: the one installed with the test requirements
    env["PATH"] = str(Path(tool("tox")).parent) + os.pathsep + env.get("PATH", "")
    server = devpid_server
    auth = make_user(server, None, "pw")
    stage = make_index(server, auth, "dev")
    make_index(server, auth, "prod")
    dists = [make_wheel(tmp / "d", "tested-pkg", "1.0"),
             make_sdist(tmp / "d", "tested-pkg", "1.0", extra_files={"tox.ini": TOX_INI})]
    twine_upload(f"{server.url}/{stage}/", auth, env, *dists)
    devpi(env, "use", server.url + "/")
    devpi(env, "login", auth[0], "--password", auth[1])
    devpi(env, "use", stage)
    # only the wheel: tox installs it as it is (building the sdist would need a backend)
    out = devpi(env, "test", "--select", r"\.whl$", "tested-pkg")
    return server, auth, stage, env, out


def test_devpi_test_posts_the_report_and_devpi_list_shows_it(tested: Any) -> None:
    server, _auth, stage, env, out = tested
    assert "posting tox result data to" in out and "success" in out, out
    data = _versiondata(server, stage, "tested-pkg", "1.0")
    wheel = next(link for link in _links(data, "releasefile") if link["href"].endswith(".whl"))
    (tox,) = _links(data, "toxresult")
    assert tox["for_href"] == wheel["href"]
    assert tox["href"].startswith(wheel["href"].rsplit("/", 1)[0] + "/tested_pkg-1.0-py3")
    assert ".whl.toxresult-" in tox["href"] and tox["href"].endswith("-0")
    report = requests.get(tox["href"], timeout=10)
    assert report.status_code == 200 and "testenvs" in report.json()
    assert tox["hashes"]["sha256"] and tox["log"][0]["what"] == "upload"
    listing = devpi(env, "list", "-t", "tested-pkg")
    assert "tests passed" in listing, listing


def test_push_copies_results_and_deleting_the_file_deletes_them(tested: Any) -> None:
    server, auth, stage, env, _out = tested
    prod = f"{auth[0]}/prod"
    devpi(env, "push", "tested-pkg==1.0", prod)
    devpi(env, "push", "tested-pkg==1.0", prod)  # again (volatile): the result is not doubled
    (tox,) = _links(_versiondata(server, prod, "tested-pkg", "1.0"), "toxresult")
    assert tox["href"].startswith(f"{server.url}/{prod}/+f/")
    assert requests.get(tox["href"], timeout=10).status_code == 200
    wheel = next(link["href"] for link in
                 _links(_versiondata(server, prod, "tested-pkg", "1.0"), "releasefile")
                 if link["href"].endswith(".whl"))
    r = server.json("DELETE", wheel.removeprefix(server.url), auth=auth)
    assert r.status_code == 200, r.text
    assert _links(_versiondata(server, prod, "tested-pkg", "1.0"), "toxresult") == []
    assert requests.get(tox["href"], timeout=10).status_code in (404, 410)
    # the original index keeps its own
    assert len(_links(_versiondata(server, stage, "tested-pkg", "1.0"), "toxresult")) == 1


def test_a_second_report_gets_the_next_number(tested: Any) -> None:
    server, _auth, stage, _env, _out = tested
    data = _versiondata(server, stage, "tested-pkg", "1.0")
    wheel = next(link["href"] for link in _links(data, "releasefile")
                 if link["href"].endswith(".whl"))
    r = requests.post(wheel, json={"testenvs": {}, "reportversion": "1"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "toxresultpath"
    assert r.json()["result"].split("#")[0].endswith("-1")
    assert "#sha256=" in r.json()["result"]
    assert len(_links(_versiondata(server, stage, "tested-pkg", "1.0"), "toxresult")) == 2


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "could not decode json"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"\xff\xfe", 400, "could not decode json"),
        (b'{"testenvs": {}, "duration": NaN}', 400, "could not decode json"),
        (b'{"testenvs": {"py": {"time": Infinity}}}', 400, "could not decode json"),
        (b'{"testenvs": [-Infinity]}', 400, "could not decode json"),
    ],
)
def test_bad_reports_are_refused(tested: Any, body: bytes, status: int, message: str) -> None:
    server, _auth, stage, _env, _out = tested
    data = _versiondata(server, stage, "tested-pkg", "1.0")
    wheel = _links(data, "releasefile")[0]["href"]
    before = len(_links(data, "toxresult"))
    r = requests.post(wheel, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status and message in r.json()["message"], r.text
    assert len(_links(_versiondata(server, stage, "tested-pkg", "1.0"), "toxresult")) == before


def test_reports_only_for_release_files_and_not_too_big(tested: Any) -> None:
    server, _auth, stage, _env, _out = tested
    r = requests.post(f"{server.url}/{stage}/+f/abc/def/nothing-1.0.tar.gz", json={},
                      timeout=10)
    assert r.status_code == 404 and "no release file found" in r.json()["message"]
    r = requests.post(f"{server.url}/nobody/none/+f/abc/def/x.whl", json={}, timeout=10)
    assert r.status_code == 404
    r = requests.post(f"{server.url}/root/pypi/+f/abc/def/x.whl", json={}, timeout=10)
    assert r.status_code == 403 and "is a mirror" in r.json()["message"]
    wheel = _links(_versiondata(server, stage, "tested-pkg", "1.0"), "releasefile")[0]["href"]
    big = b'{"x": "' + b"a" * MAX_TOXRESULT_BYTES + b'"}'
    r = requests.post(wheel, data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text


def test_acl_toxresult_upload_limits_who_may_post(
    devpid_server: Devpid, tmp_path: Path
) -> None:
    server = devpid_server
    owner = make_user(server, None, "pw")
    other = make_user(server, None, "pw")
    stage = make_index(server, owner, "ci", acl_toxresult_upload=[owner[0]])
    wheel = make_wheel(tmp_path, "acl-pkg", "1.0")
    twine_upload(f"{server.url}/{stage}/", owner, client_env(tmp_path / "c"), wheel)
    href = _links(_versiondata(server, stage, "acl-pkg", "1.0"), "releasefile")[0]["href"]
    for auth in (None, other):
        r = requests.post(href, json={"testenvs": {}}, auth=auth, timeout=10)
        assert r.status_code == 403 and "--no-upload" in r.json()["message"], r.text
    r = requests.post(href, json={"testenvs": {}}, auth=owner, timeout=10)
    assert r.status_code == 200, r.text


def test_results_survive_export_and_import(start_devpid: Any, tmp_path: Path) -> None:
    server = start_devpid(root_pypi=False)
    auth = make_user(server, "tester", "pw")
    stage = make_index(server, auth, "dev")
    wheel = make_wheel(tmp_path / "d", "kept-pkg", "1.0")
    env = client_env(tmp_path / "c")
    twine_upload(f"{server.url}/{stage}/", auth, env, wheel)
    href = _links(_versiondata(server, stage, "kept-pkg", "1.0"), "releasefile")[0]["href"]
    report = {"testenvs": {"py": {"test": []}}, "reportversion": "1"}
    assert requests.post(href, json=report, timeout=10).status_code == 200
    run([tool("devpid"), "export", "--serverdir", str(server.serverdir),
         str(tmp_path / "dump")], env)
    run([tool("devpid"), "import", "--serverdir", str(tmp_path / "copy"),
         str(tmp_path / "dump"), *import_store_args()], env)
    copy = start_devpid(init=False, name="copy")
    (tox,) = _links(_versiondata(copy, stage, "kept-pkg", "1.0"), "toxresult")
    assert json.loads(requests.get(tox["href"], timeout=10).content) == report


def test_a_replaced_file_loses_the_reports_of_the_old_bytes(
    devpid_server: Devpid, tmp_path: Path
) -> None:
    """A volatile index takes a re-upload of other bytes under the same name: the reports
    were about the old bytes and go; an identical re-upload keeps them."""
    server = devpid_server
    auth = make_user(server, None, "pw")
    stage = make_index(server, auth, "vol")
    env = client_env(tmp_path / "c")

    def twine(wheel: Path) -> None:
        twine_upload(f"{server.url}/{stage}/", auth, env, wheel)

    first = make_wheel(tmp_path / "a", "swap-pkg", "1.0")
    twine(first)
    href = _links(_versiondata(server, stage, "swap-pkg", "1.0"), "releasefile")[0]["href"]
    assert requests.post(href, json={"testenvs": {}}, timeout=10).status_code == 200
    twine(first)  # the same bytes again
    (tox,) = _links(_versiondata(server, stage, "swap-pkg", "1.0"), "toxresult")
    twine(make_wheel(tmp_path / "b", "swap-pkg", "1.0", extra_bytes=1000))  # other bytes
    assert _links(_versiondata(server, stage, "swap-pkg", "1.0"), "toxresult") == []
    assert requests.get(tox["href"], timeout=10).status_code in (404, 410)


def test_results_per_file_are_bounded_in_count_and_size(
    devpid_server: Devpid, tmp_path: Path
) -> None:
    """Anyone may post by default: a file's results are bounded (count, total bytes)."""
    server = devpid_server
    auth = make_user(server, None, "pw")
    stage = make_index(server, auth, "many")
    env = client_env(tmp_path / "c")
    twine_upload(f"{server.url}/{stage}/", auth, env,
                 make_wheel(tmp_path / "a", "many-pkg", "1.0"),
                 make_wheel(tmp_path / "a", "many-pkg", "2.0"))
    hrefs = sorted(link["href"] for v in ("1.0", "2.0")
                   for link in _links(_versiondata(server, stage, "many-pkg", v),
                                      "releasefile"))
    with requests.Session() as s:
        for _ in range(MAX_TOXRESULTS_PER_FILE):
            assert s.post(hrefs[0], json={"testenvs": {}}, timeout=10).status_code == 200
        r = s.post(hrefs[0], json={"testenvs": {}}, timeout=10)
        assert r.status_code == 409 and "tox results" in r.json()["message"], r.text
        big = b'{"x": "' + b"a" * (MAX_TOXRESULT_BYTES - 100) + b'"}'
        posts = MAX_TOXRESULTS_BYTES_PER_FILE // len(big)
        for _ in range(posts):
            r = s.post(hrefs[1], data=big, headers={"Content-Type": "application/json"},
                       timeout=30)
            assert r.status_code == 200, r.text
        r = s.post(hrefs[1], data=big, headers={"Content-Type": "application/json"},
                   timeout=30)
        assert r.status_code == 409 and "in total" in r.json()["message"], r.text
    counts = [len(_links(_versiondata(server, stage, "many-pkg", v), "toxresult"))
              for v in ("1.0", "2.0")]
    assert sorted(counts) == sorted([MAX_TOXRESULTS_PER_FILE, posts])
