"""The daemon's write API: ``async with store.write() as tx: ...``.

Writes of one process go one at a time through a DeferredLock: two requests on one node
never conflict with each other (e.g. parallel uploads to one project on PostgreSQL, where a
commit made after another's read would otherwise be refused with a 409), and a write reads
the state every earlier write of the process left. Reads never take the lock.

The block itself runs on the reactor and must not wait (no ``await`` inside it: the lock is
held); ``__aexit__`` awaits the store's commit. SQLiteStore commits inline (local, ~0.1 ms);
PostgresStore sends the commit to its one write thread and applies the result to its local
view on the reactor, so the reactor never waits on the network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import DeferredLock


class _Pending(Protocol):
    serial: int | None

    @property
    def pending(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=_Pending)


class WriteQueue:
    """The per-process write lock, with the counts /+status reports."""

    def __init__(self) -> None:
        self.lock = DeferredLock()
        self.waiting = 0
        self.commits = 0

    def status(self) -> dict[str, Any]:
        return {"writes": {"waiting": self.waiting, "busy": self.lock.locked,
                           "commits": self.commits}}


class AsyncWrite(Generic[T]):
    """One write: take the process's write lock, yield a transaction, commit on a clean
    exit (only if something changed), release the lock in every case."""

    def __init__(self, queue: WriteQueue, new: Callable[[], T],
                 commit: Callable[[T], Awaitable[int]]) -> None:
        self._queue = queue
        self._new = new
        self._commit = commit
        self._tx: T | None = None

    async def __aenter__(self) -> T:
        queue = self._queue
        queue.waiting += 1
        try:
            await queue.lock.acquire()
        finally:
            queue.waiting -= 1
        try:
            self._tx = self._new()  # after the lock: it reads what earlier writes left
        except BaseException:
            queue.lock.release()
            raise
        return self._tx

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        tx = self._tx
        try:
            if exc_type is None and tx is not None and tx.pending:
                tx.serial = await self._commit(tx)
                self._queue.commits += 1
        finally:
            self._queue.lock.release()
