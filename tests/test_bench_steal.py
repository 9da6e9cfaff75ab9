"""The benchmark flags runs that the hypervisor slowed down (CPU steal), so noisy numbers
are not mistaken for a regression or a win."""

from __future__ import annotations

from bench.run import cpu_times, steal_lines, steal_percent

STAT = "cpu  100 0 50 800 10 0 5 {steal} 0 0\ncpu0 50 0 25 400 5 0 2 0 0 0\n"


def test_steal_share_between_two_snapshots() -> None:
    before = cpu_times(STAT.format(steal=35))
    after = cpu_times(STAT.format(steal=35).replace("cpu  100 0 50 800", "cpu  180 0 70 880"))
    assert before["steal"] == 35 and before["idle"] == 800
    assert steal_percent(before, after) == 0.0
    after = cpu_times(STAT.format(steal=95).replace("cpu  100 0 50 800", "cpu  180 0 70 880"))
    assert steal_percent(before, after) == 25.0  # 60 of 240 jiffies


def test_unknown_or_empty_counters_say_nothing() -> None:
    assert cpu_times("intr 1 2 3\n") == {}
    assert steal_percent({}, {"steal": 1}) is None
    same = cpu_times(STAT.format(steal=1))
    assert steal_percent(same, same) is None
    assert steal_lines(None) == []


def test_results_page_warns_only_when_steal_is_high() -> None:
    calm = steal_lines(0.4)
    assert calm[0].startswith("CPU steal during the run: 0.4%") and "noisy" not in calm[0]
    assert "noisy" in steal_lines(12.5)[0]


def test_this_machine_counters_read() -> None:
    now = cpu_times()
    assert now == {} or {"user", "system", "idle"} <= now.keys()


def test_results_page_names_the_load_samples_hit_by_steal() -> None:
    raw = [
        {"measure": "file_5MB_c1", "server": "devpid", "value": 1.0, "load": {"steal_pct": 31.0}},
        {"measure": "page_html_rps", "server": "nginx", "value": 1.0, "load": {"steal_pct": 0.2}},
        {"measure": "page_json_rps", "server": "devpid", "value": 1.0, "load": {}},
        {"measure": "startup", "server": "devpid", "value": 0.7},
    ]
    line = steal_lines(1.5, raw)[0]
    assert "noisy" not in line  # the run as a whole was calm...
    assert "steal or more: 1; worst: devpid file_5MB_c1 (31.0%)" in line  # ...one sample was not
    assert "steal or more" not in steal_lines(1.5, raw[1:])[0]
