"""Issue 19's hardening, probed the way an attacker on the network would: with real clients
against the real daemon. The security model these tests pin down is README's "Security"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT_PASSWORD, Devpid, run, tool
from tests.support.fakepypi import FakePyPI
from tests.support.polling import wait_for
from tests.test_events import Receiver

ROOT = ("root", ROOT_PASSWORD)
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def message(r: requests.Response) -> str:
    return str(r.json().get("message", ""))


@pytest.fixture(scope="module")
def absolute_up() -> Iterator[FakePyPI]:
    """An upstream whose pages name files by absolute URL on http://127.0.0.1:PORT."""
    fake = FakePyPI(absolute_urls=True)
    fake.start()
    yield fake
    fake.close()


# -- High 1: SSRF -------------------------------------------------------------------------------
def test_only_root_creates_mirrors_and_sets_mirror_url(
    devpid_server: Devpid, alice: tuple[str, str], upstream: FakePyPI
) -> None:
    user, _ = alice
    r = devpid_server.json("PUT", f"/{user}/m", auth=alice,
                           json={"type": "mirror", "mirror_url": upstream.url})
    assert r.status_code == 403 and "mirror" in message(r), r.text
    assert devpid_server.json("GET", f"/{user}/m").status_code == 404
    r = devpid_server.json("PUT", f"/{user}/m", auth=ROOT,
                           json={"type": "mirror", "mirror_url": upstream.url})
    assert r.status_code == 200, r.text
    r = devpid_server.json("PATCH", f"/{user}/m", auth=alice,
                           json=["mirror_url=http://127.0.0.1:1/simple/"])
    assert r.status_code == 403, r.text
    assert devpid_server.json("GET", f"/{user}/m").json()["result"]["mirror_url"] == upstream.url
    # the owner still manages everything else of it
    r = devpid_server.json("PATCH", f"/{user}/m", auth=alice, json=["title=Mine"])
    assert r.status_code == 200, r.text


def test_mirror_never_connects_to_loopback_by_address_or_name(
    start_devpid: Any, upstream: FakePyPI, unique: str
) -> None:
    server: Devpid = start_devpid(upstream_url=upstream.url, allow_private=False)
    name = f"ssrf-{unique}"
    upstream.publish(name, "1.0")
    before = len(upstream.requests)
    by_name = upstream.url.replace("127.0.0.1", "localhost")
    for n, url in enumerate([upstream.url, by_name]):
        assert server.json("PUT", f"/root/m{n}", auth=ROOT,
                           json={"type": "mirror", "mirror_url": url}).ok
        r = requests.get(f"{server.url}/root/m{n}/+simple/{name}/",
                         headers={"Accept": JSON_ACCEPT}, timeout=10)
        assert r.status_code == 502, r.text
        assert "loopback" in message(r) and "allow-private-addresses" in message(r), r.text
    assert len(upstream.requests) == before  # not even a connection attempt got through


def test_mirror_files_only_from_the_upstreams_hosts(
    devpid_server: Devpid, start_devpid: Any, absolute_up: FakePyPI, unique: str
) -> None:
    """Files a page names on another host are neither fetched nor redirected to."""
    name = f"elsewhere-{unique}"
    absolute_up.publish(name, "1.0")
    by_name = absolute_up.url.replace("127.0.0.1", "localhost")  # files stay on 127.0.0.1
    stage = f"root/far{unique}"
    assert devpid_server.json("PUT", f"/{stage}", auth=ROOT,
                              json={"type": "mirror", "mirror_url": by_name}).ok
    page = requests.get(f"{devpid_server.url}/{stage}/+simple/{name}/",
                        headers={"Accept": JSON_ACCEPT}, timeout=10)
    assert page.status_code == 200, page.text
    file_url = requests.compat.urljoin(page.url, page.json()["files"][0]["url"])
    before = absolute_up.count("/files/")
    r = requests.get(file_url, timeout=10)
    assert r.status_code == 502 and "mirror-file-hosts" in message(r), r.text
    assert devpid_server.json("PATCH", f"/{stage}", auth=ROOT,
                              json=["mirror_use_external_urls=True"]).ok
    r = requests.get(file_url, timeout=10, allow_redirects=False)
    assert r.status_code == 502 and "Location" not in r.headers, r.text
    assert absolute_up.count("/files/") == before
    # an admin's allowlist lets them through
    other: Devpid = start_devpid("--mirror-file-hosts", "127.0.0.1", upstream_url=by_name)
    page = requests.get(f"{other.url}/root/pypi/+simple/{name}/",
                        headers={"Accept": JSON_ACCEPT}, timeout=10)
    r = requests.get(requests.compat.urljoin(page.url, page.json()["files"][0]["url"]),
                     timeout=10)
    assert r.status_code == 200 and r.content.startswith(b"PK"), r.text[:200]


def test_webhooks_never_reach_loopback(start_devpid: Any, tmp_path: Path, env: dict[str, str]
                                       ) -> None:
    from tests.support.pkgbuild import make_wheel

    receiver = Receiver()
    try:
        server: Devpid = start_devpid(allow_private=False)
        assert server.json("PUT", "/w", json={"password": "pw"}).status_code == 201
        hooks = [receiver.url, receiver.url.replace("127.0.0.1", "localhost")]
        assert server.json("PUT", "/w/dev", auth=("w", "pw"), json={"webhooks": hooks}).ok
        run([tool("twine"), "upload", "--repository-url", server.url + "/w/dev/", "-u", "w",
             "-p", "pw", str(make_wheel(tmp_path, "hooked", "1.0"))], env)

        def refused() -> str | None:
            hook = server.json("GET", "/+status").json()["result"]["event-hooks"]["webhooks"]
            error = hook["last-error"] or ""
            return error if "loopback" in error else None

        error = wait_for(refused, what="the webhook to be refused")
        assert "/hook" not in error  # the URL's path (a webhook's token) is not shown
        assert receiver.bodies == []
    finally:
        receiver.close()


# -- High 2: passwords ----------------------------------------------------------------------------
def _hash(cost: int) -> str:
    import bcrypt

    if 4 <= cost <= 14:
        return bcrypt.hashpw(b"chosen", bcrypt.gensalt(cost)).decode()
    # a well-formed hash bcrypt would happily spend 2**cost rounds on (never computed here)
    return bcrypt.hashpw(b"chosen", bcrypt.gensalt(4)).decode().replace("$04$", f"${cost:02d}$")


def test_only_root_sets_pwhash_and_only_sane_costs(
    devpid_server: Devpid, alice: tuple[str, str], unique: str
) -> None:
    for auth in (None, alice):
        r = devpid_server.json("PUT", f"/ph{unique}", auth=auth, json={"pwhash": _hash(4)})
        assert r.status_code == 403 and "pwhash" in message(r), r.text
    for cost in (31, 15, 3):
        r = devpid_server.json("PUT", f"/ph{unique}", auth=ROOT, json={"pwhash": _hash(cost)})
        assert r.status_code == 400 and "cost" in message(r), r.text
    r = devpid_server.json("PUT", f"/ph{unique}", auth=ROOT, json={"pwhash": _hash(4)})
    assert r.status_code == 201, r.text
    assert devpid_server.login(f"ph{unique}", "chosen")


def test_wrong_password_flood_is_cut_off_without_locking_out_tokens(start_devpid: Any) -> None:
    server: Devpid = start_devpid("--max-login-failures", "3")
    for name in ("victim", "bystander"):
        assert server.json("PUT", f"/{name}", json={"password": "right"}).status_code == 201
    token = server.login("victim", "right")
    codes = [requests.post(server.url + "/+login", json={"user": "victim", "password": "x"}
                           ).status_code for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429], codes
    r = server.json("PUT", "/victim/x", auth=("victim", "wrong"), json={})
    assert r.status_code == 429 and r.headers.get("Retry-After"), r.text
    # a login token needs no bcrypt: the owner keeps working; other users are not affected
    assert server.json("PUT", "/victim/dev", auth=("victim", token), json={}).ok
    assert server.login("bystander", "right")


def test_stored_hash_of_absurd_cost_is_never_computed(start_devpid: Any) -> None:
    """A hash that got in before (an import, an old version) cannot stall a thread."""
    server: Devpid = start_devpid()
    assert server.json("PUT", "/slow", json={"password": "pw"}).status_code == 201
    from devpid.store import keys, open_store

    server.stop()
    store, _ = open_store(server.serverdir)
    with store.transaction() as tx:
        tx.set(keys.user("slow"), {**store.get(keys.user("slow")), "pwhash": _hash(31)})
    store.close()
    server.start()
    # (computing it would take days: the request would time out instead)
    r = requests.post(server.url + "/+login", json={"user": "slow", "password": "pw"}, timeout=30)
    assert r.status_code == 401, r.text


# -- Medium 4: credentials in index configs -------------------------------------------------
def test_credentials_in_configs_only_for_owner_and_root(
    devpid_server: Devpid, alice: tuple[str, str], upstream: FakePyPI, tmp_path: Path,
    env: dict[str, str], unique: str,
) -> None:
    from tests.support.pkgbuild import make_wheel

    user, pw = alice
    secret_url = upstream.url.replace("http://", "http://mirroruser:mirror-secret@")
    assert devpid_server.json("PUT", f"/{user}/m", auth=ROOT,
                              json={"type": "mirror", "mirror_url": secret_url + "?t=qtoken"}).ok
    hook = "http://127.0.0.1:1/hooks/path-token?key=query-token"  # nothing listens: it fails
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={"webhooks": [hook]}).ok
    run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/dev/",
         "-u", user, "-p", pw, str(make_wheel(tmp_path, f"cred-{unique}", "1.0"))], env)
    wait_for(lambda: (devpid_server.json("GET", "/+status").json()["result"]["event-hooks"]
                      ["webhooks"]["last-error"]), what="the webhook to fail")
    secrets = ("mirror-secret", "qtoken", "path-token", "query-token")
    bob = (f"bob{unique}", "pw")
    assert devpid_server.json("PUT", f"/{bob[0]}", json={"password": "pw"}).ok
    for who in (None, bob):
        for path in ("/", f"/{user}", f"/{user}/m", f"/{user}/dev", "/+status"):
            text = devpid_server.json("GET", path, auth=who).text
            assert not [s for s in secrets if s in text], (who, path, text[:3000])
    m = devpid_server.json("GET", f"/{user}/m").json()["result"]
    assert m["mirror_url"].startswith("http://***@127.0.0.1:")  # where it points stays visible
    for who in (alice, ROOT):
        assert "mirror-secret" in devpid_server.json("GET", f"/{user}/m", auth=who).text
        assert "path-token" in devpid_server.json("GET", f"/{user}", auth=who).text


# -- Medium 7: ACL names ----------------------------------------------------------------------
def test_acls_name_existing_users_only_and_forget_deleted_ones(
    devpid_server: Devpid, alice: tuple[str, str], unique: str, tmp_path: Path,
    env: dict[str, str],
) -> None:
    from tests.support.pkgbuild import make_wheel

    user, _ = alice
    ghost, bob = f"ghost{unique}", f"bob{unique}"
    r = devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={"acl_upload": [user, ghost]})
    assert r.status_code == 400 and ghost in message(r), r.text
    assert devpid_server.json("PUT", f"/{bob}", json={"password": "pw"}).status_code == 201
    assert devpid_server.json("PUT", f"/{user}/dev", auth=alice, json={
        "acl_upload": [user, bob, ":AUTHENTICATED:"], "acl_toxresult_upload": [":ANONYMOUS:"],
    }).ok
    r = devpid_server.json("PATCH", f"/{user}/dev", auth=alice, json=[f"acl_upload+={ghost}"])
    assert r.status_code == 400 and ghost in message(r), r.text
    assert devpid_server.json("DELETE", f"/{bob}", auth=(bob, "pw")).ok
    acl = devpid_server.json("GET", f"/{user}/dev").json()["result"]["acl_upload"]
    assert acl == [user, ":AUTHENTICATED:"]
    # whoever registers the name again gets nothing of the old bob's rights
    assert devpid_server.json("PUT", f"/{bob}", json={"password": "new"}).status_code == 201
    assert devpid_server.json("PATCH", f"/{user}/dev", auth=alice,
                              json=["acl_upload-=:AUTHENTICATED:"]).ok
    proc = run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/dev/",
                "-u", bob, "-p", "new", str(make_wheel(tmp_path, f"acl-{unique}", "1.0"))],
               env, check=False)
    assert proc.returncode != 0 and "403" in proc.stdout + proc.stderr, proc.stdout


# -- Low: who may delete and yank ---------------------------------------------------------------
def test_open_upload_acl_grants_no_delete_or_yank(
    devpid_server: Devpid, alice: tuple[str, str], unique: str, tmp_path: Path,
    env: dict[str, str],
) -> None:
    from tests.support.pkgbuild import make_wheel

    user, pw = alice
    assert devpid_server.json("PUT", f"/{user}/open", auth=alice,
                              json={"acl_upload": [":ANONYMOUS:"]}).ok
    name = f"open-{unique}"
    run([tool("twine"), "upload", "--repository-url", f"{devpid_server.url}/{user}/open/",
         "-u", user, "-p", pw, str(make_wheel(tmp_path, name, "1.0"))], env)
    mallory = (f"mallory{unique}", "pw")
    assert devpid_server.json("PUT", f"/{mallory[0]}", json={"password": "pw"}).ok
    for method, path in (("POST", f"/{user}/open/{name}/1.0/+yank"),
                         ("DELETE", f"/{user}/open/{name}/1.0"),
                         ("DELETE", f"/{user}/open/{name}")):
        r = devpid_server.json(method, path, auth=mallory)
        assert r.status_code == 403, (method, path, r.text)
    assert devpid_server.json("GET", f"/{user}/open/{name}/1.0").ok
    assert devpid_server.json("POST", f"/{user}/open/{name}/1.0/+yank", auth=alice).ok


# -- Low: oversized and trickling bodies ----------------------------------------------------------
def _raw(server: Devpid, head: bytes, body: bytes = b"", timeout: float = 15.0) -> bytes:
    """Send ``head`` (and ``body``), then read until the server closes (or ``timeout``)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_oversized_body_refused_before_reading_and_trickles_time_out(start_devpid: Any) -> None:
    server: Devpid = start_devpid("--max-upload-size", "1k", "--body-timeout", "1")
    head = (b"POST /root/pypi/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
    answer = _raw(server, head)  # not one byte of the body is sent
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"100 Continue" not in answer and b"upload limit" in answer
    assert b"Connection: close" in answer
    # a small body that never completes: 408 once its time is up, and the connection closed
    head = (b"PUT /trickler HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")
    answer = _raw(server, head, b'{"password": ')
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert server.json("GET", "/trickler").status_code == 404
    # honest requests still work
    assert server.json("PUT", "/honest", json={"password": "pw"}).status_code == 201


# -- Low: doc-upload versions -----------------------------------------------------------------
def test_doc_upload_versions_are_validated_like_file_versions(
    devpid_server: Devpid, alice: tuple[str, str], tmp_path: Path, unique: str
) -> None:
    from tests.test_private_index import http_upload, make_doczip

    user, _ = alice
    assert devpid_server.json("PUT", f"/{user}/docs", auth=alice, json={}).ok
    name = f"docs-{unique}"
    doc = make_doczip(tmp_path / "d.zip", {"index.html": b"<p>docs</p>"})
    for version in ("1.0\r\nX-Injected: 1", "1.0\x00", "1.0\x1b[31m", "..", "1.0 beta",
                    "1.0/../x"):
        r = http_upload(devpid_server, alice, f"{user}/docs", doc, name=name, version=version,
                        action="doc_upload")
        assert r.status_code == 400 and "version" in message(r), (version, r.text)
    listed = devpid_server.json("GET", f"/{user}/docs/{name}")
    assert listed.status_code == 404 or listed.json()["result"] == {}, listed.text
    r = http_upload(devpid_server, alice, f"{user}/docs", doc, name=name, version="1.0",
                    action="doc_upload")
    assert r.status_code == 200, r.text


# -- Low: file modes ------------------------------------------------------------------------------
def test_database_files_are_owner_only(start_devpid: Any) -> None:
    import os
    import stat

    from devpid.store import DB_NAME

    server: Devpid = start_devpid()
    assert server.json("PUT", "/modes", json={"password": "pw"}).status_code == 201
    db = server.serverdir / DB_NAME
    files = [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm"))]

    def modes() -> dict[str, int]:
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()}

    assert db.name in modes() and set(modes().values()) == {0o600}, modes()
    server.stop()
    for path in files:  # made by an older version, or a careless copy
        if path.exists():
            os.chmod(path, 0o644)
    server.start()
    assert server.json("PUT", "/modes2", json={"password": "pw"}).status_code == 201
    assert set(modes().values()) == {0o600}, modes()


# -- Low: no 500 for absolute-form targets -----------------------------------------------------
def test_absolute_form_request_target_is_a_400(devpid_server: Devpid) -> None:
    for target in (f"http://127.0.0.1:{devpid_server.port}/root/pypi", "http://x/"):
        for method in ("GET", "PUT", "OPTIONS"):
            answer = _raw(devpid_server, f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
                          "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 400 "), (method, target, answer[:300])
            assert b"application/json" in answer and b"request target" in answer


def test_server_never_makes_hashes_it_would_refuse(tmp_path: Path) -> None:
    """--bcrypt-rounds outside 4..14 would write hashes the password check refuses."""
    from tests.conftest import client_env

    for cmd in ([tool("twistd"), "-n", "--pidfile=", "devpid", "--serverdir", str(tmp_path / "s"),
                 "--init", "--bcrypt-rounds", "31"],
                [tool("devpid"), "init", "--serverdir", str(tmp_path / "s"),
                 "--bcrypt-rounds", "3"]):
        proc = run(cmd, client_env(tmp_path / "c"), check=False, timeout=60)
        assert proc.returncode != 0 and "bcrypt" in proc.stdout + proc.stderr, proc.stdout
    assert not (tmp_path / "s").exists()


def test_failures_per_address_count_the_proxys_client(start_devpid: Any) -> None:
    """Behind the generated nginx every request comes from loopback: X-Real-IP names the
    client, so one client's flood does not stop everyone's password logins."""
    server: Devpid = start_devpid("--max-login-failures", "2")  # 6 per address
    for name in ("u0", "u1", "u2", "u9"):
        assert server.json("PUT", f"/{name}", json={"password": "pw"}).status_code == 201

    def login(user: str, client: str) -> int:
        return requests.post(server.url + "/+login", json={"user": user, "password": "x"},
                             headers={"X-Real-IP": client}).status_code

    codes = [login(f"u{n}", "192.0.2.1") for n in range(3) for _ in range(2)]
    assert codes == [401] * 6, codes
    assert login("u9", "192.0.2.1") == 429  # this address is done for a minute
    assert login("u9", "192.0.2.2") == 401  # another client is not


FORGED = {"X-Outside-Url": "http://evil.invalid/x", "Host": "evil.invalid:1",
          "Accept": "application/json"}


def test_forwarding_headers_count_only_from_trusted_proxies(
        start_devpid: Any, devpid_server: Devpid) -> None:
    """Host, X-Outside-Url and X-Real-IP are believed only from ``--trusted-proxy`` peers:
    with a list that leaves out loopback, this test's requests are an untrusted client's,
    and links, redirects and the login limit's address ignore what it claims."""
    server: Devpid = start_devpid("--trusted-proxy", "192.0.2.7,198.51.100.0/24",
                                  "--max-login-failures", "1")  # 3 per address
    own = f"http://127.0.0.1:{server.port}"
    r = requests.get(server.url + "/+api", headers=FORGED, timeout=10)
    assert r.json()["result"]["login"] == own + "/+login"
    r = requests.get(server.url + "/root/pypi/+simple", headers=FORGED, timeout=10,
                     allow_redirects=False)
    assert r.status_code in (301, 302, 307, 308) and r.headers["Location"].startswith(own), r
    for name in ("v0", "v1", "v2", "v9"):
        assert server.json("PUT", f"/{name}", json={"password": "pw"}).status_code == 201
    codes = [requests.post(server.url + "/+login", json={"user": f"v{n}", "password": "x"},
                           headers={"X-Real-IP": f"192.0.2.{n + 10}"}, timeout=10).status_code
             for n in range(3)]
    assert codes == [401] * 3, codes
    r = requests.post(server.url + "/+login", json={"user": "v9", "password": "x"},
                      headers={"X-Real-IP": "192.0.2.99"}, timeout=10)
    assert r.status_code == 429  # all of them came from 127.0.0.1, whatever they said
    # From a trusted proxy (loopback, the default) the same headers are what links use.
    r = requests.get(devpid_server.url + "/+api", headers=FORGED, timeout=10)
    assert r.json()["result"]["login"] == "http://evil.invalid/x/+login"


def test_trusted_proxy_option_is_validated(tmp_path: Path) -> None:
    from twisted.python import usage

    from devpid.tap import Options

    with pytest.raises(usage.UsageError, match="trusted-proxy"):
        Options().parseOptions(["--serverdir", str(tmp_path), "--trusted-proxy", "nginx"])
    options = Options()
    options.parseOptions(["--serverdir", str(tmp_path), "--trusted-proxy", ""])
    assert options["trusted-proxy"] == []
