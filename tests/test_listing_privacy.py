"""Issue 15, item 4: anonymous visitors learn nothing they may not read. A user's email is
shown in ``GET /``, ``GET /USER`` and the web view only to that user and root; search filters
by the caller's readable indexes before it cuts to its result limit."""

from __future__ import annotations

import uuid
from typing import Any

import requests

from tests.conftest import ROOT_PASSWORD, Devpid
from tests.test_private_index import http_upload, make_index, make_user

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


def test_emails_only_to_their_user_and_root(devpid_server: Devpid) -> None:
    name = f"mail{uuid.uuid4().hex[:8]}"
    email = f"{name}@corp.example"
    r = devpid_server.json("PUT", f"/{name}", json={"password": "pw", "email": email})
    assert r.status_code == 201, r.text
    other = make_user(devpid_server)
    url = devpid_server.url
    for auth in (None, other, (name, "wrong")):
        listing = requests.get(url + "/", headers=JSON, auth=auth).json()["result"]
        assert name in listing and "email" not in listing[name], auth
        user = requests.get(f"{url}/{name}", headers=JSON, auth=auth).json()["result"]
        assert user["username"] == name and "email" not in user
        page = requests.get(f"{url}/{name}", headers=HTML, auth=auth)
        assert page.status_code == 200 and email not in page.text, auth
    for auth in ((name, "pw"), ("root", ROOT_PASSWORD)):
        listing = requests.get(url + "/", headers=JSON, auth=auth).json()["result"]
        assert listing[name]["email"] == email
        assert requests.get(f"{url}/{name}", headers=JSON,
                            auth=auth).json()["result"]["email"] == email
        assert email in requests.get(f"{url}/{name}", headers=HTML, auth=auth).text


def test_search_filters_unreadable_hits_before_the_limit(devpid_server: Devpid) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    owner = make_user(devpid_server)
    secret = make_index(devpid_server, owner, "hidden", acl_read=[owner[0]])
    public = make_index(devpid_server, owner, "open")
    for i in range(60):  # names that rank above the public hit's summary
        r = http_upload(devpid_server, owner, secret, None, name=f"{word}-{i}", version="1.0",
                        action="submit", extra={"summary": f"{word} secret thing"})
        assert r.ok, r.text
    r = http_upload(devpid_server, owner, public, None, name="plain-tool", version="1.0",
                    action="submit", extra={"summary": f"works with {word}"})
    assert r.ok, r.text
    found = requests.get(devpid_server.url + "/+search", params={"q": word},
                         headers=JSON).json()["result"]
    assert [(h["name"], h["stage"]) for h in found] == [("plain-tool", public)]
    page = requests.get(devpid_server.url + "/+search", params={"q": word}, headers=HTML)
    assert "plain-tool" in page.text and f"{word}-1" not in page.text
    mine = requests.get(devpid_server.url + "/+search", params={"q": word}, headers=JSON,
                        auth=owner).json()["result"]
    assert len(mine) == 50 and all(h["stage"] == secret for h in mine)


def test_public_emails_restores_devpis_listing(start_devpid: Any) -> None:
    server = start_devpid("--public-emails", name="devpi-like")
    r = server.json("PUT", "/pub", json={"password": "pw", "email": "pub@corp.example"})
    assert r.status_code == 201, r.text
    assert requests.get(server.url + "/", headers=JSON).json()["result"]["pub"]["email"] == (
        "pub@corp.example")
    assert "pub@corp.example" in requests.get(server.url + "/pub", headers=HTML).text
