"""Per-process memo dicts that forget everything when a commit touches what they derive from.

Commit listeners fire for this process's commits and, with ``--workers``, for other
processes' commits seen by polling, so a memo is never stale across processes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from devpid.store.base import Store

K = TypeVar("K")
V = TypeVar("V")


class CommitClearedDict(dict[K, V]):
    """A dict emptied by any commit that changes a key starting with one of ``prefixes``."""

    def __init__(self, store: Store, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes
        store.add_commit_listener(self._committed)

    def _committed(self, serial: int, changes: dict[str, Any]) -> None:
        if any(key.startswith(self.prefixes) for key in changes):
            self.clear()


__all__ = ["CommitClearedDict"]
