"""The download watchdog and the held-back last byte (pure logic, on a fake clock)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from devpid.mirror.downloads import Download

DATA = b"0123456789" * 10


def make(tmp_path: Path, data: bytes = DATA) -> tuple[Download, list[str]]:
    tmp = tmp_path / "in-x"
    stopped: list[str] = []

    def done(_: Download) -> Deferred[Any]:
        return succeed(None)

    dl = Download(url="http://up/f", tmp=tmp, out=tmp.open("wb"),
                  expected={"sha256": hashlib.sha256(data).hexdigest()},
                  expected_size=len(data), on_done=done)
    dl.committed.addErrback(lambda f: None)
    return dl, stopped


def test_stall_aborts_after_the_idle_timeout_without_a_byte(tmp_path: Path) -> None:
    clock = Clock()
    dl, stopped = make(tmp_path)
    dl.watch(clock, 2.0, 0.0, lambda: stopped.append("stop"))
    for _ in range(5):  # a byte now and then keeps it alive, however slow
        clock.advance(1.9)
        dl.data(b"x")
    assert not dl.finished
    clock.advance(2.0)
    assert dl.finished and dl.error and "stalled" in dl.error
    assert stopped == ["stop"] and not dl.tmp.exists()
    dl.end(None)  # the closing upstream connection reports later: ignored
    assert dl.error and "stalled" in dl.error


def test_trickle_below_the_minimum_rate_aborts(tmp_path: Path) -> None:
    clock = Clock()
    dl, stopped = make(tmp_path)
    dl.watch(clock, 2.0, 100.0, lambda: stopped.append("stop"))
    for _ in range(4):  # 250 bytes/s: fine
        clock.advance(0.5)
        dl.data(b"y" * 125)
    assert not dl.finished
    for _ in range(8):  # 40 bytes/s over the next window: too slow
        clock.advance(0.25)
        dl.data(b"y" * 10)
    assert dl.finished and dl.error and "too slow" in dl.error and stopped == ["stop"]


def test_last_byte_is_held_back_until_verified(tmp_path: Path) -> None:
    good, _ = make(tmp_path)
    good.data(DATA)
    assert good.sendable() == len(DATA) - 1
    good.end(None)
    assert good.error is None and good.sendable() == len(DATA)
    bad, _ = make(tmp_path, data=b"other bytes")
    bad.data(DATA[:11])
    assert bad.sendable() == 10
    bad.end(None)
    assert bad.error and "sha256 mismatch" in bad.error and bad.sendable() == 0
