"""Torture: upstream-fault trials repeated against one real daemon, counts in the output.

Each round runs every way our fake upstream can lie on a project page and every way it can
break a file download (with a random size between 200 kB and 2 MB and a random framing:
Content-Length, chunked or connection close), each on a fresh mirror index, and checks the
promises of issue 13: a bad page never replaces the cached one and a never-cached project
gets a 502 naming the upstream; no reader of a broken download ever gets a complete 200 or
waits forever, and the next request after the fault downloads afresh and gets the right
bytes. Violations are collected, the counts printed, then asserted.

The short form runs in CI (``DEVPID_TORTURE_ROUNDS``, default 1); the seed is printed and can
be set with ``DEVPID_TORTURE_SEED`` to repeat a run.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ROOT_PASSWORD, Devpid, init_serverdir
from tests.support.fakepypi import FILE_FAULTS, PAGE_FAULTS, FakePyPI
from tests.support.mirrorclients import concurrent_reads, file_url, page, status, wait_for

ROUNDS = int(os.environ.get("DEVPID_TORTURE_ROUNDS", "1"))
SEED = int(os.environ.get("DEVPID_TORTURE_SEED", str(random.randrange(1 << 30))))
TIMEOUT = 2
MIN_RATE = 50_000
TRICKLE = 4_000


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakePyPI]:
    fake = FakePyPI(tmp_path_factory.mktemp("torture-upstream"))
    fake.start()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, up: FakePyPI) -> Iterator[Devpid]:
    serverdir = tmp_path_factory.mktemp("torture") / "server"
    init_serverdir(serverdir, up.url)
    daemon = Devpid(serverdir, args=["--request-timeout", str(TIMEOUT),
                                     "--mirror-min-rate", str(MIN_RATE)]).start()
    yield daemon
    daemon.stop()


class Trials:
    """Counts of what happened and the invariants that did not hold."""

    def __init__(self, server: Devpid, up: FakePyPI) -> None:
        self.server, self.up = server, up
        self.counts: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.n = 0

    def check(self, ok: bool, what: str) -> None:
        self.counts[what if ok else f"VIOLATED {what}"] += 1
        if not ok:
            self.violations.append(what)

    def new_mirror(self) -> str:
        self.n += 1
        user = f"t{self.n}x{SEED}"
        assert self.server.json("PUT", f"/{user}", json={"password": "pw"}).status_code == 201
        r = self.server.json("PUT", f"/{user}/mirror", auth=("root", ROOT_PASSWORD), json={
            "type": "mirror", "mirror_url": self.up.url, "mirror_cache_expiry": "1"})
        assert r.ok, r.text
        return f"{user}/mirror"

    def page_faults(self, round_no: int) -> None:
        """All page faults at once (one wait for the cache to expire), each on its own index."""
        cases = []
        for fault in PAGE_FAULTS:
            stage = self.new_mirror()
            name, fresh = f"tp-{fault}-{round_no}-{SEED}", f"tn-{fault}-{round_no}-{SEED}"
            self.up.publish(name, "1.0")
            self.up.publish(name, "2.0")
            self.up.publish(fresh, "1.0")
            cases.append((fault, stage, name, fresh, page(self.server, stage, name).json()))
        for fault, _, name, fresh, _ in cases:
            self.up.page_fault(name, fault)
            self.up.page_fault(fresh, fault)
        time.sleep(1.1)  # every cached page is stale now
        for fault, stage, name, fresh, good in cases:
            self.counts["page trials"] += 1
            r = page(self.server, stage, name)
            self.check(r.ok and r.json()["files"] == good["files"], "cached page served")
            url = f"{self.up.url}{name}/"

            def recorded(url: str = url, stage: str = stage) -> bool:
                return url in (status(self.server, stage)["last_error"] or "")

            seen = wait_for(recorded, 10)
            self.check(bool(seen), "failure recorded in /+status")
            r = page(self.server, stage, fresh)
            self.check(r.status_code == 502 and f"127.0.0.1:{self.up.port}" in r.text,
                       "never-cached project: 502 naming the upstream")
            again = page(self.server, stage, name)
            self.check(again.ok and again.json()["files"] == good["files"],
                       "cached page still served")
            if self.violations:
                self.violations[-1] += f" ({fault})"
        self.up.clear_faults()

    def file_fault(self, rng: random.Random, fault: str, round_no: int) -> None:
        up = self.up
        stage = self.new_mirror()
        name = f"tf-{fault}-{round_no}-{SEED}"
        path = up.publish(name, "1.0", extra_bytes=rng.randrange(200_000, 2_000_000))
        size = path.stat().st_size
        framing = rng.choice(["length", "chunked", "close"])
        url = file_url(self.server, stage, name)
        self.counts[f"file trials ({fault})"] += 1
        up.file_fault(path.name, fault)  # type: ignore[arg-type]
        if fault == "trickle":
            up.slow_rate = TRICKLE
        elif fault == "corrupt":  # an upstream slower than the readers, about 1 s per file
            up.slow_rate, up.mode = size, "slow"
        up.file_framing = framing  # type: ignore[assignment]
        try:
            results: list[Any] = concurrent_reads(url, 2, stagger=0.1)
        finally:
            up.clear_faults()
            up.file_framing = "length"
        for code, got, outcome in results:
            self.counts["readers"] += 1
            ok = outcome not in ("hung", "complete") and got < size and code in (200, None)
            self.check(ok, "reader cut off, never a complete 200, never hung")
            if not ok:
                self.violations[-1] += f" ({fault}, {framing}, {size} B: {outcome}, {got} B)"
        before = up.count(f"/files/{path.name}")
        r = requests.get(url, timeout=30)
        good = r.ok and hashlib.sha256(r.content).digest() == hashlib.sha256(
            path.read_bytes()).digest()
        self.check(good and up.count(f"/files/{path.name}") == before + 1,
                   "next request: a fresh download with the right bytes")


def test_torture_upstream_faults(server: Devpid, up: FakePyPI,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    trials = Trials(server, up)
    started = time.monotonic()
    for round_no in range(ROUNDS):
        trials.page_faults(round_no)
        faults = list(FILE_FAULTS)
        rng.shuffle(faults)
        for fault in faults:
            trials.file_fault(rng, fault, round_no)
    tmp = server.serverdir / "+blobs" / "tmp"
    # the last good download is committed (renamed) just after its client got it
    trials.check(wait_for(lambda: not any(p.is_file() for p in tmp.rglob("*")), 5),
                 "no temp blob left")
    trials.check("Traceback" not in server.log(), "no traceback in the log")
    with capsys.disabled():
        print(f"\ntorture upstream: seed {SEED}, {ROUNDS} round(s), "
              f"{time.monotonic() - started:.0f} s")
        for what, count in sorted(trials.counts.items()):
            print(f"  {count:4d}  {what}")
    assert not trials.violations, trials.violations
