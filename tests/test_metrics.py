"""``/+metrics``: the status as Prometheus text an ops person can scrape and alert on."""

from __future__ import annotations

import re

import requests

from devpid.metrics import RequestCounters, render
from tests.conftest import Devpid

LINE = re.compile(
    r'^(# (HELP|TYPE) devpid_[a-z_]+ .+|devpid_[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? '
    r"-?[0-9.e+]+)$"
)


def parse(text: str) -> dict[str, float]:
    """'name{labels}' -> value, checking every line against the exposition format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        assert LINE.match(line), line
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_render_turns_status_into_families() -> None:
    counters = RequestCounters()
    for code in (200, 200, 304, 404, 502, 999):
        counters.count(code, 100, 2.0)
    text = render(
        {
            "versioninfo": {"devpid": "1.2"}, "role": "MASTER", "uuid": 'a"b\\c',
            "serial": 41, "last-commit-timestamp": 1700000000.5, "started": None,
            "mirrors": {"root/pypi": {"in_backoff": True, "consecutive_failures": 3,
                                      "last_success": None, "project_list": {"names": 7},
                                      "downloads_in_progress": 0}},
            "offline-mode": False,
            "event-hooks": {"webhooks": {"serial": 39}},
            "blob-gc": {"last": None, "removed_total": 2, "freed_bytes_total": 4096,
                        "failures": 0},
        },
        counters,
    ).decode()
    values = parse(text)
    assert values['devpid_info{version="1.2",role="MASTER",uuid="a\\"b\\\\c"}'] == 1
    assert values["devpid_serial"] == 41
    assert values["devpid_last_commit_timestamp_seconds"] == 1700000000.5
    assert "devpid_start_time_seconds" not in text  # unknown values are left out
    assert values['devpid_http_responses_total{code="2xx"}'] == 2
    assert values['devpid_http_responses_total{code="5xx"}'] == 1
    assert values["devpid_http_response_bytes_total"] == 600
    assert values['devpid_mirror_upstream_up{stage="root/pypi"}'] == 0
    assert values['devpid_mirror_upstream_consecutive_failures{stage="root/pypi"}'] == 3
    assert values['devpid_mirror_project_list_names{stage="root/pypi"}'] == 7
    assert values["devpid_offline_mode"] == 0
    assert values['devpid_event_hook_backlog_serials{hook="webhooks"}'] == 2
    assert values["devpid_blob_gc_freed_bytes_total"] == 4096
    assert "# TYPE devpid_http_responses_total counter" in text
    assert text.count("# TYPE devpid_mirror_upstream_up gauge") == 1


def test_the_daemon_serves_metrics(devpid_server: Devpid) -> None:
    url = devpid_server.url + "/+metrics"
    first = requests.get(url, timeout=10)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    before = parse(first.text)
    for _ in range(3):
        assert requests.get(devpid_server.url + "/+api", timeout=10).status_code == 200
    assert requests.get(devpid_server.url + "/nobody-here/none", timeout=10).status_code == 404
    # the mirror's upstream gets asked (a name it does not have): now it has a state to show
    requests.get(devpid_server.url + "/root/pypi/+simple/not-on-the-upstream/", timeout=10)
    after = parse(requests.get(url, timeout=10).text)
    ok = 'devpid_http_responses_total{code="2xx"}'
    missing = 'devpid_http_responses_total{code="4xx"}'
    assert after[ok] >= before.get(ok, 0) + 4  # three /+api and the first scrape
    assert after[missing] >= before.get(missing, 0) + 1
    status = devpid_server.json("GET", "/+status").json()["result"]
    assert after["devpid_serial"] <= status["serial"]
    assert after['devpid_mirror_upstream_up{stage="root/pypi"}'] == 1
    assert after["devpid_process_resident_memory_bytes"] > 10e6
    assert after["devpid_blob_gc_failures"] == 0
    assert any(name.startswith("devpid_event_hook_serial{") for name in after)
    assert requests.post(url, timeout=10).status_code == 405
