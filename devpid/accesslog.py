"""One access-log line per request, cheaply.

Going through twisted.logger costs tens of microseconds per event (event dicts, observers,
formatting); at thousands of requests per second that is a large share of a cached page.
Lines are formatted directly and written to stdout in batches a few times a second (and at
shutdown), in the same text layout as the rest of the log, or as JSON lines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

FLUSH_DELAY = 0.2


class AccessLog:
    def __init__(self, reactor: Any, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.reactor = reactor
        self.fmt = fmt
        self.stream = stream or sys.stdout
        self.lines: list[str] = []
        self._pending: Any = None
        self._second = -1
        self._stamp = ""  # flushed last at shutdown by devpid.node's LogsService

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(second))
        return self._stamp

    def record(
        self, client: str, method: str, uri: str, code: int, size: int, duration_ms: float
    ) -> None:
        now = time.time()
        if self.fmt == "json":
            line = json.dumps({
                "log_namespace": "devpid.access", "log_level": "info", "log_time": now,
                "client": client, "method": method, "uri": uri, "code": code, "size": size,
                "duration_ms": round(duration_ms, 2),
            })
        else:
            line = (f"{self._timestamp(now)} [devpid.access#info] {client} {method} {uri} "
                    f"{code} {size} {duration_ms:.1f}ms")
        self.lines.append(line)
        if self._pending is None:
            self._pending = self.reactor.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self.lines:
            lines, self.lines = self.lines, []
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (closed pipe at shutdown): nothing useful to do
