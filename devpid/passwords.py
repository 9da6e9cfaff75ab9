"""Password checks that cannot take the server down: their own small thread pool, a bound
on queued checks and a rate limit on failures per user and per client address.

bcrypt is slow on purpose, so a flood of wrong passwords (or of registrations) would
otherwise fill the worker pool that also hashes uploads. Here checks and new hashes run in
``devpid-bcrypt`` (two threads); while a
user or an address has had too many recent failures, further checks for it are refused at
once (429) without running bcrypt; more than ``MAX_PENDING`` queued checks are refused with
503. Successful checks are remembered (auth.VerifiedPasswords), so twine's password on
every upload costs one bcrypt run, not one per request.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from devpid import auth

THREADS = 2
MAX_PENDING = 32
WINDOW = 60.0  # seconds over which failures count
MAX_FAILURES_PER_USER = 10  # default of --max-login-failures
ADDRESS_FACTOR = 3  # an address may fail for a few users before it is stopped
_MAX_KEYS = 10000


class Throttled(Exception):
    """A check refused without running it; ``code`` is the HTTP status to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FailureLimiter:
    """Recent failure times per key (bounded in keys and per-key entries)."""

    def __init__(self, clock: Any, limit: int, window: float = WINDOW) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        cutoff = self.clock.seconds() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked(self, key: str) -> bool:
        times = self._recent(key)
        return times is not None and len(times) >= self.limit

    def failed(self, key: str) -> None:
        times = self._recent(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(self.clock.seconds())
        self._failures.move_to_end(key)
        while len(self._failures) > _MAX_KEYS:
            self._failures.popitem(last=False)


class PasswordChecker:
    """``await check(user, password, pwhash, address)``; owns the bcrypt pool."""

    def __init__(self, reactor: Any, verified: auth.VerifiedPasswords,
                 max_failures: int = MAX_FAILURES_PER_USER) -> None:
        """``max_failures`` per user (and ``ADDRESS_FACTOR`` times that per address) within
        ``WINDOW`` seconds; 0 disables the limit (tests hammering one daemon)."""
        self.reactor = reactor
        self.verified = verified
        self.pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="devpid-bcrypt")
        self.pending = 0
        self.limited = max_failures > 0
        self.users = FailureLimiter(reactor, max_failures)
        self.addresses = FailureLimiter(reactor, max_failures * ADDRESS_FACTOR)
        self.failures = 0  # wrong passwords since start (/+metrics)
        self.throttled = 0  # checks refused by the rate limit

    def status(self) -> dict[str, Any]:
        return {"login-failures": self.failures, "login-throttled": self.throttled}

    async def check(self, user: str, password: str, pwhash: str, address: str | None) -> bool:
        if self.verified.known(user, password, pwhash):
            return True
        addr_key = address or "-"
        if self.limited and (self.users.blocked(user) or self.addresses.blocked(addr_key)):
            self.throttled += 1
            raise Throttled(429, "too many failed logins; try again in a minute")
        ok = await self._run(auth.check_password, password, pwhash)
        if ok:
            self.verified.remember(user, password, pwhash)
            return True
        self.failures += 1
        if self.limited:
            self.users.failed(user)
            self.addresses.failed(addr_key)
        return bool(ok)

    async def hash(self, password: str, rounds: int) -> str:
        """A new hash, in the same pool: registrations cannot flood the upload workers."""
        return str(await self._run(auth.hash_password, password, rounds))

    async def _run(self, f: Any, *args: Any) -> Any:
        if self.pending >= MAX_PENDING:
            raise Throttled(503, "too many password checks in progress; try again")
        self.pending += 1
        try:
            return await deferToThreadPool(self.reactor, self.pool, f, *args)
        finally:
            self.pending -= 1


__all__ = ["FailureLimiter", "PasswordChecker", "Throttled"]
