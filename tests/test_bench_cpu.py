"""The benchmark records how busy each server was during a load sample, so a number held
back by the kernel's send path (a server at 100% of a core, nearly all system time) is told
apart from one held back by the server's own code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.run import cpu_share, cpu_table
from bench.servers import process_cpu_seconds


def _stat(pid: int, ppid: int, utime: int, stime: int) -> str:
    # /proc/PID/stat: pid (comm) state ppid ... with utime and stime as fields 14 and 15
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 30
    return f"{pid} (name with ) and spaces) " + " ".join(fields) + "\n"


def test_cpu_of_a_process_and_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    for pid, ppid, ut, st in ((10, 1, 2 * tick, tick), (11, 10, tick, tick), (12, 1, 9, 9)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, ppid, ut, st))
    import bench.servers as servers

    monkeypatch.setattr(servers, "_children", lambda pid: [11] if pid == 10 else [])
    assert process_cpu_seconds([10], proc=str(tmp_path)) == (5.0, 2.0)
    # a pid listed twice (nginx and devpid share nothing, but a child is not counted twice)
    assert process_cpu_seconds([10, 11], proc=str(tmp_path)) == (5.0, 2.0)
    assert process_cpu_seconds([99], proc=str(tmp_path)) == (0.0, 0.0)  # gone: nothing


def test_this_process_is_measured() -> None:
    total, system = process_cpu_seconds([os.getpid()])
    assert total >= system >= 0.0 and total > 0.0


def test_share_in_percent_of_one_core() -> None:
    assert cpu_share((1.0, 0.5), (5.6, 4.9), 5.0) == (92.0, 88.0)
    assert cpu_share((1.0, 0.5), (1.0, 0.5), 0.0) == (None, None)
    assert cpu_share((5.0, 1.0), (1.0, 0.5), 5.0) == (None, None)  # a restarted process


def test_results_page_table_of_server_cpu() -> None:
    raw: list[dict[str, Any]] = [
        {
            "measure": "file_5MB_c1",
            "server": "nginx",
            "load": {"server_cpu_pct": 93.0, "server_sys_pct": 92.0},
        },
        {
            "measure": "file_5MB_c1",
            "server": "nginx",
            "load": {"server_cpu_pct": 97.0, "server_sys_pct": 90.0},
        },
        {
            "measure": "file_5MB_c1",
            "server": "devpid",
            "load": {"server_cpu_pct": 99.0, "server_sys_pct": 80.0},
        },
        {"measure": "startup", "server": "devpid", "value": 0.7},
        {"measure": "file_5MB_c32", "server": "devpi", "load": {"server_cpu_pct": None}},
    ]
    lines = cpu_table(raw)
    row = next(line for line in lines if line.startswith("| cached 5 MB wheel, 1 client"))
    assert "| 95% (system 91%) | - | 99% (system 80%) | - |" in row
    assert not any("32 clients" in line for line in lines)
    assert cpu_table([{"measure": "startup", "server": "devpid", "value": 1.0}]) == []
