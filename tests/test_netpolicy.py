"""Pure logic of devpid/netpolicy.py and devpid/redact.py (the daemon tests are in
test_security.py)."""

from __future__ import annotations

import ipaddress

import pytest

from devpid.netpolicy import file_host_allowed, refusal
from devpid.redact import redact_config, redact_url, redact_webhook, scrub


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "fe80::1", "fc00::1", "0.0.0.0", "::", "224.0.0.1", "100.64.0.1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "240.0.0.1",
])
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "151.101.0.223"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_file_hosts() -> None:
    up = "https://mirror.example/simple/"
    assert file_host_allowed("https://MIRROR.example./x.whl", up, [])
    assert not file_host_allowed("https://evil.example/x.whl", up, [])
    assert file_host_allowed("https://files.example/x.whl", up, ["files.example"])
    assert file_host_allowed("https://anything.example/x.whl", up, ["*"])


def test_redaction() -> None:
    assert redact_url("https://u:pw@h.example:8443/simple/?token=t") == \
        "https://***@h.example:8443/simple/?***"
    assert redact_url("https://h.example/simple/") == "https://h.example/simple/"
    assert redact_webhook("https://hooks.example/T1/B2/secret?x=1") == "https://hooks.example/***"
    config = {"type": "mirror", "mirror_url": "http://a:b@h/s/", "webhooks": ["http://h/k"]}
    assert redact_config(config) == {"type": "mirror", "mirror_url": "http://***@h/s/",
                                     "webhooks": ["http://h/***"]}
    assert config["mirror_url"] == "http://a:b@h/s/"  # a copy
    assert scrub({"e": ["upstream http://u:p@h/x?k=v: refused"]}) == {
        "e": ["upstream http://***@h/x?***: refused"]}
