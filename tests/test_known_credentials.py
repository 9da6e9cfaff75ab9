"""Private cached pages at the fast door's speed, and never past a credential's life.

Once the full route has verified a caller's credentials, the fast paths answer that caller's
reads of a private index directly (devpid/readacl.py ``KnownCredentials``). These tests show
the answers do come from the fast door, and that a password change, a revoked token, a
narrowed ``acl_read``, a token's scope and a wrong password all take effect at once.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

from devpid.readacl import KnownCredentials
from tests.conftest import Devpid
from tests.support.pkgbuild import make_wheel
from tests.test_fastchannel import fast_count
from tests.test_private_index import http_upload, make_index, make_user

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PIP = {"User-Agent": "pip/24.0", "Accept": SIMPLE_JSON}


def _private_page(server: Devpid, tmp: Path, readers: list[str]) -> tuple[tuple[str, str], str]:
    owner = make_user(server)
    stage = make_index(server, owner, f"p{uuid.uuid4().hex[:6]}", acl_read=readers)
    project = f"known-{uuid.uuid4().hex[:6]}"
    wheel = make_wheel(tmp, project, "1.0")
    assert http_upload(server, owner, stage, wheel, name=project, version="1.0").ok
    return owner, f"{server.url}/{stage}/+simple/{project}/"


def _fast_gets(session: requests.Session, server: Devpid, page: str,
               auth: tuple[str, str], n: int = 5) -> int:
    """How many of ``n`` keep-alive GETs the fast door answered (all must be 200)."""
    before = fast_count(server)
    for _ in range(n):
        r = session.get(page, headers=PIP, auth=auth)
        assert r.status_code == 200, r.text
        assert r.headers["X-Accel-Expires"] == "0"  # never for nginx's shared cache
    return fast_count(server) - before


def test_a_known_reader_is_served_by_the_fast_door_until_the_password_changes(
        devpid_server: Devpid, tmp_path: Path) -> None:
    reader = make_user(devpid_server)
    _, page = _private_page(devpid_server, tmp_path, [reader[0]])
    with requests.Session() as s:
        assert s.get(page, headers=PIP, auth=reader).status_code == 200  # verified, cached
        assert _fast_gets(s, devpid_server, page, reader) >= 5
        wrong = (reader[0], "not-the-password")
        r = s.get(page, headers=PIP, auth=wrong)
        assert r.status_code == 401  # another secret for the same user is checked afresh
        r = devpid_server.json("PATCH", f"/{reader[0]}", auth=reader,
                               json={"password": "changed-pw"})
        assert r.status_code == 200, r.text
        r = s.get(page, headers=PIP, auth=reader)
        assert r.status_code == 401, "the old password still opened the private page"
        assert _fast_gets(s, devpid_server, page, (reader[0], "changed-pw"), n=3) >= 2


def test_narrowing_acl_read_refuses_a_known_reader_at_once(
        devpid_server: Devpid, tmp_path: Path) -> None:
    reader = make_user(devpid_server)
    owner, page = _private_page(devpid_server, tmp_path, [reader[0]])
    stage = page.split("/+simple/")[0].split(devpid_server.url + "/")[1]
    with requests.Session() as s:
        assert s.get(page, headers=PIP, auth=reader).status_code == 200
        assert _fast_gets(s, devpid_server, page, reader) >= 5
        r = devpid_server.json("PATCH", f"/{stage}", auth=owner, json=["acl_read="])
        assert r.status_code == 200, r.text
        assert s.get(page, headers=PIP, auth=reader).status_code == 403


def test_scoped_tokens_keep_their_scope_and_die_when_revoked(
        devpid_server: Devpid, tmp_path: Path) -> None:
    reader = make_user(devpid_server)
    _, page = _private_page(devpid_server, tmp_path, [reader[0]])
    stage = page.split("/+simple/")[0].split(devpid_server.url + "/")[1]
    _, other_page = _private_page(devpid_server, tmp_path, [reader[0]])

    def mint(actions: list[str]) -> tuple[str, str]:
        r = devpid_server.json("POST", f"/{reader[0]}/+tokens", auth=reader,
                               json={"indexes": [stage], "actions": actions,
                                     "expires_in": 600})
        assert r.status_code == 201, r.text
        result = r.json()["result"]
        return result["id"], result["token"]

    token_id, token = mint(["read"])
    cred = (reader[0], token)
    with requests.Session() as s:
        assert s.get(page, headers=PIP, auth=cred).status_code == 200
        assert _fast_gets(s, devpid_server, page, cred) >= 5
        # known credentials, but the token is not valid for the other index
        assert s.get(other_page, headers=PIP, auth=cred).status_code == 403
        _, upload_only = mint(["upload"])
        assert s.get(page, headers=PIP, auth=(reader[0], upload_only)).status_code == 403
        r = devpid_server.json("DELETE", f"/{reader[0]}/+tokens/{token_id}", auth=reader)
        assert r.status_code == 200, r.text
        assert s.get(page, headers=PIP, auth=cred).status_code == 401


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Store:
    def __init__(self) -> None:
        self.listeners: list = []  # type: ignore[type-arg]

    def add_commit_listener(self, listener: object) -> None:
        self.listeners.append(listener)


@pytest.mark.parametrize("until", [None, 1010.0])
def test_entries_expire_after_the_ttl_or_the_secret(until: float | None) -> None:
    clock, store = _Clock(), _Store()
    known = KnownCredentials(store, b"secret", clock=clock)
    known.remember(b"basic abc", "alice", None, until)
    assert known.recall(b"basic abc") == ("alice", None)
    assert known.recall(b"basic abd") is None
    clock.now += 10 if until else KnownCredentials.TTL
    assert known.recall(b"basic abc") is None


def test_any_user_or_token_commit_forgets_every_entry() -> None:
    store = _Store()
    known = KnownCredentials(store, b"secret", clock=_Clock())
    known.remember(b"basic abc", "alice", None)
    store.listeners[0](5, {"index/alice/dev": {}})
    assert known.recall(b"basic abc") is not None
    store.listeners[0](6, {"token/bob/x": None})
    assert known.recall(b"basic abc") is None
