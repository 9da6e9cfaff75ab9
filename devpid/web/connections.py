"""How many client connections a process holds open, and room for them in its fd limit.

Every open connection costs a file descriptor (two while it streams a file). A process that
runs out of descriptors stops accepting anything at all (Twisted logs "Out of file
descriptors" and the listening socket spins), so idle clients could starve everyone. Hence:

* at start-up the soft ``RLIMIT_NOFILE`` is raised towards what ``--max-connections`` needs
  (never above the hard limit), and the limit is lowered to what the descriptors allow;
* at the limit, a new connection first evicts the connection that has waited longest with
  no request in progress (an idle keep-alive, or a request head that never completed): it
  costs nothing to drop and its client reconnects when it has something to ask;
* only when every connection is busy answering a request is the new one answered
  ``503`` with a JSON message and closed.

The header and keep-alive timeouts that close waiting connections are the channel's (see
:mod:`devpid.web.fastchannel`); this module only counts and chooses.
"""

from __future__ import annotations

import heapq
import json
import resource
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

log = Logger()

FDS_PER_CONNECTION = 2  # the socket, and an open blob file while a download streams
FD_RESERVE = 64  # the database, logs, listening sockets, worker pipes, mirror fetches
RETRY_AFTER = 1

_MESSAGE = "server has too many open connections, retry shortly"
_BODY = json.dumps({"message": _MESSAGE}).encode() + b"\n"
REFUSAL = (
    b"HTTP/1.1 503 Too many open connections\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n\r\n" % (len(_BODY), RETRY_AFTER)
) + _BODY


def fd_budget(wanted: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft limit to set, connections it allows) for ``wanted`` connections. Pure."""
    need = wanted * FDS_PER_CONNECTION + FD_RESERVE
    unlimited = resource.RLIM_INFINITY
    new_soft = soft
    if soft != unlimited and soft < need:
        new_soft = need if hard == unlimited else min(need, hard)
    if new_soft == unlimited:
        return new_soft, wanted
    room = max((new_soft - FD_RESERVE) // FDS_PER_CONNECTION, 1)
    return new_soft, min(wanted, room)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft fd limit for ``wanted`` connections; the limit to use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, allowed = fd_budget(wanted, soft, hard)
    if new_soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-file limit to {new}: {error}",
                     new=new_soft, error=e)
            new_soft, allowed = fd_budget(wanted, soft, soft)
    if allowed < wanted:
        log.warn(
            "--max-connections {wanted} does not fit the open-file limit {limit} "
            "(raise LimitNOFILE / ulimit -n); using {allowed}",
            wanted=wanted, limit=new_soft, allowed=allowed,
        )
    return allowed


class Refused(protocol.Protocol):
    """Answers 503 to a connection over the limit and closes it."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(REFUSAL)
        transport.loseConnection()


EVICT_BATCH = 64


class ConnectionLimit:
    """The open connections of one site (per process: with ``--workers N``, per worker).

    A channel reports itself with :meth:`opened` and :meth:`closed`; while it has no
    request in progress its ``devpid_waiting_since`` is the monotonic time it began to
    wait, else None. Counts are reported in ``/+status`` as ``connections``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[Any, None] = {}
        self.refused = 0
        self.evicted = 0

    def make_room(self) -> bool:
        """Whether a new connection may be served (evicting waiting ones if needed).

        At the limit, one scan finds the longest-waiting connections and drops up to
        ``EVICT_BATCH`` of them (1% of the limit, at least one): a flood of new connections
        costs one scan per batch, not one per connection.
        """
        if len(self.open) < self.limit:
            return True
        batch = max(1, min(EVICT_BATCH, self.limit // 100))
        waiting = ((since, n, channel) for n, channel in enumerate(self.open)
                   if (since := channel.devpid_waiting_since) is not None)
        victims = heapq.nsmallest(batch, waiting)
        if not victims:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warn("{limit} connections are busy: refused {count} with 503 so far",
                         limit=self.limit, count=self.refused)
            return False
        for _, _, victim in victims:
            self.evicted += 1
            del self.open[victim]
            victim.transport.abortConnection()
        return True

    def opened(self, channel: Any) -> None:
        self.open[channel] = None

    def closed(self, channel: Any) -> None:
        self.open.pop(channel, None)

    def status(self) -> dict[str, Any]:
        return {"connections": {"open": len(self.open), "limit": self.limit,
                                "evicted": self.evicted, "refused": self.refused}}
