"""Commit latency, and how long the reactor is blocked per write, on SQLite and PostgreSQL.

Runs a real reactor in this process with a store in a temporary directory and makes small
writes (one ~250 byte value each) one after another, two ways:

``sync``   ``with store.transaction() as tx`` on the reactor: what every daemon write did
           before ``store.write()``; the reactor is blocked for the whole commit.
``async``  ``async with store.write() as tx`` (devpid/store/writes.py): on PostgreSQL only
           the transaction body, the hand-off to the write thread and applying the result
           to the local view run on the reactor.

Reactor-blocked time of an async write = the synchronous part up to the hand-off (timed
around ``ensureDeferred``) + applying the committed entry to the view (timed around
``_apply_committed``). A probe (a 1 ms LoopingCall) also reports the longest the reactor
went without running it during each phase. ``--hold SECONDS`` adds a phase per mode where
another session holds the database's commit lock that long while one write is made (what
another node's slow commit does): the probe shows the stall.

    python -m bench.commits --writes 500
    python -m bench.commits --writes 500 --store postgresql://user@127.0.0.1:5432/db --hold 0.2

The PostgreSQL database must be empty or a devpid store (a fresh one is best: the bench
adds commits to it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def _summary(values: list[float]) -> dict[str, str]:
    ordered = sorted(values)
    return {"p50": _ms(statistics.median(ordered)),
            "p99": _ms(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]),
            "max": _ms(ordered[-1])}


class Probe:
    """The longest gap between runs of a 1 ms LoopingCall: how long the reactor stalled."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.last = time.perf_counter()
        self.worst = 0.0
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.worst = 0.0
        self.loop.start(0.001)

    def stop(self) -> float:
        self.loop.stop()
        return max(self.worst, time.perf_counter() - self.last)


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def _async_write(store: Any, key: str, value: Any) -> None:
    async with store.write() as tx:
        tx.set(key, value)


async def measure(reactor: Any, store: Any, writes: int, hold: float, url: str | None,
                  modes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    applied: list[float] = []
    original_apply = getattr(store, "_apply_committed", None)
    if original_apply is not None:
        def timed_apply(*args: Any) -> None:
            t = time.perf_counter()
            try:
                original_apply(*args)
            finally:
                applied.append(time.perf_counter() - t)
        store._apply_committed = timed_apply
    probe = Probe(reactor)
    for mode in modes:
        latency: list[float] = []
        blocked: list[float] = []
        probe.start()
        for n in range(writes):
            value = {"n": n, "mode": mode, "pad": "x" * 200}
            if mode == "sync":
                t = time.perf_counter()
                with store.transaction() as tx:
                    tx.set("user/bench", value)
                latency.append(time.perf_counter() - t)
                blocked.append(latency[-1])
            else:
                applied.clear()
                t = time.perf_counter()
                d = defer.ensureDeferred(_async_write(store, "user/bench", value))
                first = time.perf_counter() - t
                await d
                latency.append(time.perf_counter() - t)
                blocked.append(first + sum(applied))
            await _sleep(reactor, 0)
        stall = probe.stop()
        rows.append({"mode": mode, "phase": "writes", "latency": _summary(latency),
                     "blocked": _summary(blocked), "stall": _ms(stall)})
        if hold and url:
            holder = _hold_lock(url, hold)
            await _sleep(reactor, 0.05)  # the holder has the lock now
            probe.start()
            t = time.perf_counter()
            if mode == "sync":
                with store.transaction() as tx:
                    tx.set("user/bench", {"held": mode})
            else:
                await _async_write(store, "user/bench", {"held": mode})
            took = time.perf_counter() - t
            stall = probe.stop()
            holder.join()
            rows.append({"mode": mode, "phase": f"lock held {hold}s", "latency":
                         {"p50": _ms(took), "p99": "", "max": ""},
                         "blocked": {"p50": "", "p99": "", "max": ""}, "stall": _ms(stall)})
    return rows


def _hold_lock(url: str, seconds: float) -> threading.Thread:
    """Another session takes the head row lock for ``seconds`` (in a thread)."""
    import psycopg

    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:
            conn.execute("SELECT serial FROM head WHERE id = 0 FOR UPDATE")
            ready.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--store", default=None, help="a postgresql:// URL (default: SQLite)")
    parser.add_argument("--modes", default="sync,async",
                        help="comma list; 'sync' alone runs against a checkout without "
                             "store.write() (PYTHONPATH=OLD_CHECKOUT:.)")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="PostgreSQL: also time one write while the lock is held this long")
    args = parser.parse_args(argv)
    if args.writes < 1:
        parser.error("--writes must be 1 or more")
    if not set(args.modes.split(",")) <= {"sync", "async"}:
        parser.error("--modes: sync and/or async")
    from twisted.internet import reactor

    from devpid.store.sqlite import SQLiteStore

    tmp = Path(tempfile.mkdtemp(prefix="devpid-bench-commits-"))
    store: Any
    if args.store:
        from devpid.store.postgres import PostgresStore

        store = PostgresStore(args.store, tmp / "view.sqlite")
        if hasattr(store, "start_writer"):
            store.start_writer(reactor)
    else:
        store = SQLiteStore(tmp / "devpid.sqlite")
    out: list[dict[str, Any]] = []

    async def run() -> None:
        try:
            out.extend(await measure(reactor, store, args.writes, args.hold, args.store,
                                     args.modes.split(",")))
        finally:
            store.close()
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    backend = "postgresql" if args.store else "sqlite"
    print(f"{backend}, {args.writes} writes per mode; milliseconds")
    print(f"{'mode':6} {'phase':18} {'latency p50/p99/max':>26} {'blocked p50/p99/max':>26}"
          f" {'stall':>8}")
    for row in out:
        lat, blk = row["latency"], row["blocked"]
        print(f"{row['mode']:6} {row['phase']:18} "
              f"{lat['p50']:>8} {lat['p99']:>8} {lat['max']:>8} "
              f"{blk['p50']:>8} {blk['p99']:>8} {blk['max']:>8} {row['stall']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
