"""Mirror policy (issue 18): the release cooldown's pure rules, then the real daemon with
real pip and uv against a fake upstream serving PEP 700 upload times."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from devpid.mirror.policy import (
    PolicyError,
    available_at,
    coerce_policy_value,
    cooldown_of,
    filter_links,
    parse_cutoff,
    parse_duration,
    refusal_message,
)
from tests.conftest import ROOT_PASSWORD, Devpid, run, tool
from tests.support.fakepypi import FakePyPI

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
NOW = 1_800_000_000.0
ROOT = ("root", ROOT_PASSWORD)  # mirrors are root's to create (--mirror-admins)


# -- pure rules ---------------------------------------------------------------------------------


@dataclass
class L:
    filename: str
    upload_time: str | None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_durations_and_cutoffs_parse_or_name_the_option() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("30m") == 1800
    assert parse_duration("45s") == 45
    assert parse_duration("1w") == 604800
    assert parse_duration("1d12h") == 129600
    assert parse_duration("3600") == 3600 and parse_duration(60) == 60
    for bad in ("7x", "", "d7", "-1d", True, 1.5, "999999999999d"):
        with pytest.raises(PolicyError, match="mirror_min_age"):
            parse_duration(bad)
    assert parse_cutoff("2026-01-31").isoformat() == "2026-01-31T00:00:00+00:00"
    assert parse_cutoff("2026-01-31T12:00:00Z").hour == 12
    assert parse_cutoff("2026-01-31T12:00:00+02:00").hour == 10
    for bad in ("yesterday", "", 5, "2026-13-01"):
        with pytest.raises(PolicyError, match="mirror_exclude_newer"):
            parse_cutoff(bad)
    assert coerce_policy_value("mirror_exclude_newer", "2026-01-31") == "2026-01-31T00:00:00Z"
    assert coerce_policy_value("mirror_min_age", " 7D ") == "7d"
    assert coerce_policy_value("mirror_min_age_unknown", "Allow") == "allow"
    with pytest.raises(PolicyError, match="mirror_min_age_unknown"):
        coerce_policy_value("mirror_min_age_unknown", "maybe")


def test_no_policy_is_none_and_zero_disables() -> None:
    assert cooldown_of({"type": "mirror"}) is None
    assert cooldown_of({"mirror_min_age": "0"}) is None
    assert cooldown_of({"mirror_min_age": "7d"}) is not None


def test_filter_keeps_old_files_and_reports_the_next_change() -> None:
    c = cooldown_of({"mirror_min_age": "1d"})
    assert c is not None
    links = [
        L("a-1.whl", iso(NOW - 2 * 86400)),
        L("a-2.whl", iso(NOW - 3600)),  # ages in 23 h from now
        L("a-3.whl", iso(NOW - 60)),
        L("a-0.whl", None),  # unknown: held back for good
    ]
    kept, until = filter_links(c, "a", links, NOW)
    assert [x.filename for x in kept] == ["a-1.whl"]
    assert until == pytest.approx(NOW - 3600 + 86400, abs=1)
    kept, until = filter_links(c, "a", links, NOW + 86400)
    assert [x.filename for x in kept] == ["a-1.whl", "a-2.whl", "a-3.whl"]
    assert until is None
    assert [x.filename for x in filter_links(c, "b", links, NOW)[0]] == ["a-1.whl"]
    allow = cooldown_of({"mirror_min_age": "1d", "mirror_min_age_unknown": "allow",
                         "mirror_min_age_exempt": ["e"]})
    assert allow is not None
    assert "a-0.whl" in [x.filename for x in filter_links(allow, "a", links, NOW)[0]]
    assert len(filter_links(allow, "e", links, NOW)[0]) == 4


def test_cutoff_refuses_forever_and_messages_name_policy_and_date() -> None:
    c = cooldown_of({"mirror_exclude_newer": "2028-01-01", "mirror_min_age": "7d"})
    assert c is not None
    after = iso(datetime(2028, 1, 2, tzinfo=UTC).timestamp())
    assert available_at(c, "p", after) == math.inf
    msg = refusal_message(c, "root/pypi", "p", "p-2.whl", after, NOW)
    assert msg and "mirror_exclude_newer" in msg and "2028-01-01T00:00:00Z" in msg
    young = iso(NOW - 86400)
    msg = refusal_message(c, "root/pypi", "p", "p-1.whl", young, NOW)
    assert msg and "mirror_min_age" in msg and "(7d)" in msg
    assert "available from " + datetime.fromtimestamp(NOW + 6 * 86400, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ") in msg
    assert refusal_message(c, "root/pypi", "p", "p-1.whl", young, NOW + 7 * 86400) is None
    msg = refusal_message(c, "root/pypi", "p", "p-1.whl", None, NOW)
    assert msg and "no upload-time" in msg and "mirror_min_age_unknown" in msg


# -- the daemon ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    fake = FakePyPI(tmp_path_factory.mktemp("policy-upstream"))
    fake.start()
    yield fake
    fake.close()


def ago(**kw: float) -> datetime:
    return datetime.now(UTC) - timedelta(**kw)


def make_mirror(server: Devpid, up: FakePyPI, unique: str, **config: object) -> str:
    user = f"p{unique}"
    assert server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
    r = server.json("PUT", f"/{user}/mirror", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url, "mirror_cache_expiry": "1", **config})
    assert r.status_code == 200, r.text
    return f"{user}/mirror"


def page(server: Devpid, stage: str, project: str) -> dict[str, object]:
    r = requests.get(f"{server.url}/{stage}/+simple/{project}/",
                     headers={"Accept": JSON_ACCEPT})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def names(server: Devpid, stage: str, project: str) -> list[str]:
    return [f["filename"] for f in page(server, stage, project)["files"]]  # type: ignore[index, attr-defined]


def file_url(server: Devpid, up: FakePyPI, stage: str, filename: str) -> str:
    sha = up.sha256(filename)
    return f"{server.url}/{stage}/+f/{sha[:3]}/{sha[3:16]}/{filename}"


def whl(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def test_cooldown_hides_young_files_from_pages_pip_uv_and_json_views(
    devpid_server: Devpid, up: FakePyPI, env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    name = f"cool-{unique}"
    up.publish(name, "1.0", upload_time=ago(days=30))
    up.publish(name, "1.5", upload_time=ago(days=20))
    up.publish(name, "2.0", upload_time=ago(hours=1))
    mirror = make_mirror(devpid_server, up, unique, mirror_min_age="7d")
    user = mirror.split("/")[0]
    # a private index using the mirror as a base inherits the policy
    assert devpid_server.json("PUT", f"/{user}/dev", auth=(user, "pw"),
                              json={"bases": [mirror]}).status_code == 200
    r = requests.get(up.url + name + "/", headers={"Accept": JSON_ACCEPT})
    upstream_times = {f["filename"]: f["upload-time"] for f in r.json()["files"]}
    for stage in (mirror, f"{user}/dev"):
        data = page(devpid_server, stage, name)
        assert [f["filename"] for f in data["files"]] == [  # type: ignore[index]
            whl(name, "1.0"), whl(name, "1.5")]
        assert data["versions"] == ["1.0", "1.5"]
        for f in data["files"]:  # type: ignore[attr-defined]
            assert f["upload-time"] == upstream_times[f["filename"]]  # PEP 700 stays truthful
        html = requests.get(f"{devpid_server.url}/{stage}/+simple/{name}/").text
        assert whl(name, "1.5") in html and whl(name, "2.0") not in html
        view = devpid_server.json("GET", f"/{stage}/{name}").json()["result"]
        assert sorted(view) == ["1.0", "1.5"]
    # the file URL says why, and when
    r = requests.get(file_url(devpid_server, up, mirror, whl(name, "2.0")))
    assert r.status_code == 403
    message = r.json()["message"]
    assert "mirror_min_age" in message and "(7d)" in message and "available from 20" in message
    assert requests.get(file_url(devpid_server, up, mirror, whl(name, "2.0")) + ".metadata"
                        ).status_code == 403
    index = f"{devpid_server.url}/{user}/dev/+simple/"
    proc = run([tool("pip"), "download", "--no-deps", "-d", str(tmp_path / "pip"), "-i", index,
                name, "--timeout", "10", "--retries", "0"], env)
    assert [p.name for p in (tmp_path / "pip").iterdir()] == [whl(name, "1.5")]
    proc = run([tool("pip"), "download", "--no-deps", "-d", str(tmp_path / "pin"), "-i", index,
                f"{name}==2.0", "--timeout", "10", "--retries", "0"], env, check=False)
    assert proc.returncode != 0 and "1.5" in proc.stdout + proc.stderr  # "from versions: ..."
    proc = run([tool("uv"), "pip", "install", "--target", str(tmp_path / "uv"),
                "--index-url", index, name], env)
    assert "==1.5" in proc.stdout + proc.stderr
    # the client's own --exclude-newer applies on top of the server's cooldown
    cutoff = ago(days=25).strftime("%Y-%m-%dT%H:%M:%SZ")
    proc = run([tool("uv"), "pip", "install", "--target", str(tmp_path / "uv2"),
                "--index-url", index, "--exclude-newer", cutoff, name], env)
    assert "==1.0" in proc.stdout + proc.stderr


def test_cached_page_is_refiltered_when_a_file_ages_in(
    devpid_server: Devpid, up: FakePyPI, unique: str
) -> None:
    name = f"agein-{unique}"
    up.publish(name, "1.0", upload_time=ago(days=3))
    up.publish(name, "2.0", upload_time=ago(hours=1, seconds=-3))  # ages in 3 s from now
    mirror = make_mirror(devpid_server, up, unique, mirror_min_age="1h",
                         mirror_cache_expiry="3600")
    assert names(devpid_server, mirror, name) == [whl(name, "1.0")]
    first = requests.get(f"{devpid_server.url}/{mirror}/+simple/{name}/",
                         headers={"Accept": JSON_ACCEPT})
    again = requests.get(f"{devpid_server.url}/{mirror}/+simple/{name}/",
                         headers={"Accept": JSON_ACCEPT})
    assert again.headers["ETag"] == first.headers["ETag"]  # still served from the page cache
    assert requests.get(file_url(devpid_server, up, mirror, whl(name, "2.0"))).status_code == 403
    deadline = time.monotonic() + 15
    while whl(name, "2.0") not in names(devpid_server, mirror, name):
        assert time.monotonic() < deadline, "2.0 never aged in"
        time.sleep(0.5)
    assert names(devpid_server, mirror, name) == [whl(name, "1.0"), whl(name, "2.0")]
    r = requests.get(file_url(devpid_server, up, mirror, whl(name, "2.0")))
    assert r.status_code == 200 and r.content == (up.directory / whl(name, "2.0")).read_bytes()


def test_unknown_upload_time_exemptions_cutoff_and_cached_files(
    devpid_server: Devpid, up: FakePyPI, unique: str
) -> None:
    name, other = f"unk-{unique}", f"exempt-{unique}"
    up.publish(name, "1.0", upload_time=ago(days=30))
    up.publish(name, "1.1", no_upload_time=True)
    up.publish(other, "1.0", upload_time=ago(minutes=5))
    mirror = make_mirror(devpid_server, up, unique)
    user = mirror.split("/")[0]
    # cached before any policy: a later policy refuses it too (no fast path around it)
    young = file_url(devpid_server, up, mirror, whl(other, "1.0"))
    assert names(devpid_server, mirror, other) == [whl(other, "1.0")]
    assert requests.get(young).status_code == 200
    assert requests.get(young).status_code == 200
    patch = devpid_server.json("PATCH", f"/{mirror}", auth=(user, "pw"),
                               json=["mirror_min_age=1d"])
    assert patch.status_code == 200, patch.text
    r = requests.get(young)
    assert r.status_code == 403 and "mirror_min_age" in r.json()["message"]
    assert names(devpid_server, mirror, other) == []
    # no upload-time: held back unless the index allows it
    assert names(devpid_server, mirror, name) == [whl(name, "1.0")]
    r = requests.get(file_url(devpid_server, up, mirror, whl(name, "1.1")))
    assert r.status_code == 403 and "no upload-time" in r.json()["message"]
    assert devpid_server.json("PATCH", f"/{mirror}", auth=(user, "pw"), json=[
        "mirror_min_age_unknown=allow", f"mirror_min_age_exempt+={other.upper()}"]).ok
    assert names(devpid_server, mirror, name) == [whl(name, "1.0"), whl(name, "1.1")]
    assert names(devpid_server, mirror, other) == [whl(other, "1.0")]
    assert requests.get(young).status_code == 200
    config = devpid_server.json("GET", f"/{mirror}").json()["result"]
    assert config["mirror_min_age_exempt"] == [other]
    # an absolute cut-off
    cutoff = ago(days=10).strftime("%Y-%m-%d")
    assert devpid_server.json("PATCH", f"/{mirror}", auth=(user, "pw"), json=[
        "mirror_min_age-=", f"mirror_exclude_newer={cutoff}"]).ok
    assert devpid_server.json("GET", f"/{mirror}").json()["result"][
        "mirror_exclude_newer"] == cutoff + "T00:00:00Z"
    assert names(devpid_server, mirror, name) == [whl(name, "1.0"), whl(name, "1.1")]
    up.publish(name, "1.2", upload_time=ago(days=1))
    assert devpid_server.json("POST", f"/{mirror}/+simple/{name}/refresh").status_code in (
        200, 302)
    assert whl(name, "1.2") not in names(devpid_server, mirror, name)
    r = requests.get(file_url(devpid_server, up, mirror, whl(name, "1.2")))
    assert r.status_code == 403 and "mirror_exclude_newer" in r.json()["message"]
    assert cutoff in r.json()["message"]


def test_bad_policy_values_are_a_400_naming_the_option(
    devpid_server: Devpid, up: FakePyPI, unique: str
) -> None:
    mirror = make_mirror(devpid_server, up, unique)
    user = mirror.split("/")[0]
    r = devpid_server.json("PATCH", f"/{mirror}", auth=(user, "pw"), json={
        "mirror_min_age": "12h", "mirror_exclude_newer": "2026-01-31T12:00:00+01:00",
        "mirror_min_age_unknown": "deny", "mirror_min_age_exempt": "Foo_Bar, baz"})
    assert r.status_code == 200, r.text
    assert {k: v for k, v in r.json()["result"].items() if "min_age" in k or "newer" in k} == {
        "mirror_min_age": "12h", "mirror_exclude_newer": "2026-01-31T11:00:00Z",
        "mirror_min_age_unknown": "deny", "mirror_min_age_exempt": ["foo-bar", "baz"]}
    for option, value in (("mirror_min_age", "7 days"), ("mirror_min_age", "-1d"),
                          ("mirror_exclude_newer", "yesterday"),
                          ("mirror_min_age_unknown", "maybe")):
        r = devpid_server.json("PATCH", f"/{mirror}", auth=(user, "pw"),
                               json={option: value})
        assert r.status_code == 400, (option, value, r.text)
        assert option in r.json()["message"]
    r = devpid_server.json("PUT", f"/{user}/m2", auth=ROOT, json={
        "type": "mirror", "mirror_url": up.url, "mirror_min_age": "soon"})
    assert r.status_code == 400 and "mirror_min_age" in r.json()["message"]
    # policy options are mirror options: a stage index refuses them
    r = devpid_server.json("PUT", f"/{user}/dev", auth=(user, "pw"),
                           json={"mirror_min_age": "7d"})
    assert r.status_code == 400
    assert devpid_server.json("GET", f"/{mirror}").json()["result"][
        "mirror_min_age"] == "12h"
