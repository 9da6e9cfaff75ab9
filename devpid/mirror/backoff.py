"""Failure bookkeeping for one upstream, so a dead upstream costs nothing per request.

While an upstream is failing, requests for it fail at once (and the server serves what it
has cached) instead of each waiting for a connect timeout. The wait grows exponentially
with jitter so many mirrors do not hammer a recovering upstream in lockstep. After the wait
a single *probe* request is let through; concurrent callers keep failing fast until that
probe has either succeeded or failed.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["Backoff"]

log = Logger()


class Backoff:
    """Exponential backoff state of one upstream, driven by an injected clock."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        initial: float = 1.0,
        maximum: float = 60.0,
        jitter: float = 0.25,
        random: Callable[[], float] = _random.random,
        name: str = "upstream",
    ) -> None:
        """``jitter`` is the fraction by which a delay may be shortened at random."""
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self._clock = clock
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._random = random
        self.name = name
        self.consecutive_failures = 0
        self.failures_total = 0  # every failed contact since start, for /+metrics
        self.delay = 0.0  # the wait after the latest failure; 0 while healthy
        self.retry_at: float | None = None
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.last_error: str | None = None
        self._probe_since: float | None = None

    def _now(self) -> float:
        return float(self._clock.seconds())

    def in_backoff(self) -> bool:
        """True while requests should fail without contacting the upstream."""
        if self.retry_at is None:
            return False
        now = self._now()
        if now < self.retry_at:
            return True
        # A probe that never reported back (a bug elsewhere) must not block forever.
        return self._probe_since is not None and now < self._probe_since + self.maximum

    def attempt(self) -> None:
        """Note that a request goes out now; if failing, it is the probe others wait for."""
        if self.retry_at is not None:
            self._probe_since = self._now()

    def release(self) -> None:
        """An attempt ended without verdict (cancelled by the caller): allow another probe."""
        self._probe_since = None

    def failed(self, error: str) -> None:
        """Record a failed contact and schedule the next allowed attempt."""
        now = self._now()
        self.consecutive_failures += 1
        self.failures_total += 1
        base = min(self.maximum, self.initial * 2.0 ** min(self.consecutive_failures - 1, 64))
        self.delay = base * (1.0 - self.jitter * self._random())
        self.retry_at = now + self.delay
        self.last_failure = now
        self.last_error = error
        self._probe_since = None
        log.warn(
            "{name}: {error}; backing off {delay:.1f}s (failure #{count})",
            name=self.name,
            error=error,
            delay=self.delay,
            count=self.consecutive_failures,
        )

    def succeeded(self) -> None:
        """Record a successful contact (any HTTP answer counts, including a 404)."""
        if self.consecutive_failures:
            log.info(
                "{name}: reachable again after {count} failure(s)",
                name=self.name,
                count=self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self.delay = 0.0
        self.retry_at = None
        self._probe_since = None
        self.last_success = self._now()

    def status(self) -> dict[str, Any]:
        """JSON-able state for ``/+status``."""
        return {
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
            "in_backoff": self.in_backoff(),
            "retry_at": self.retry_at,
            "consecutive_failures": self.consecutive_failures,
            "failures_total": self.failures_total,
        }
