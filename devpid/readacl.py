"""Read permissions (``acl_read``): who may see an index, and the one gate every read passes.

An index is readable by root, its owner and the principals in its ``acl_read`` (default
``[":ANONYMOUS:"]``, so servers that never set it behave as before). Reading an index reads
its whole inheritance chain, so it is refused unless *every* index in the chain is readable:
an index whose base you cannot read serves nothing of that base to you.

The gate sits in the root resource before the fast paths, the web view and Klein: any
request under ``/USER/INDEX/...`` (or ``/+html/USER/INDEX/...``) whose chain is not
anonymously readable skips the fast paths and caches and is checked after authentication.
Fast paths answer for chains that anyone may read, and for private chains only when the
request's credentials are ones the full route verified moments ago (``KnownCredentials``)
and their user may read the chain: an answer cached for one caller never reaches another
who may not read it, and a private index's cached page costs about what a public one does.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from devpid.domain import keys
from devpid.domain.permissions import Lookup as Lookup
from devpid.domain.permissions import acl_allows, can_read, can_read_index, can_see_status
from devpid.domain.permissions import read_acl as read_acl
from devpid.store.base import Store

# devpid.web.errors is imported where used: the web package imports this module.

log = Logger()

# The rules are the domain's (devpid/domain/permissions.py); these are their old names.
may_read_index = can_read_index
may_read = can_read


def stage_of(segments: list[bytes]) -> str | None:
    """The index a decoded request path is about, or None (``/``, ``/USER``, ``/+...``)."""
    if segments[:1] == [b"+html"]:
        segments = segments[1:]
    if len(segments) < 2:
        return None
    user, index = segments[0], segments[1]
    if not user or not index or user[:1] == b"+" or index[:1] == b"+":
        return None
    try:
        return f"{user.decode()}/{index.decode()}"
    except UnicodeDecodeError:
        return None


def public(server: Any, stage: str) -> bool:
    """Whether anyone may read ``stage`` (remembered until an index config changes)."""
    known = server.public_stages
    answer = known.get(stage)
    if answer is None:
        answer = may_read(server.index_config, None, stage)
        if len(known) > 10_000:
            known.clear()
        known[stage] = answer
    return answer


class KnownCredentials:
    """Credentials the full route verified recently, and whom they name.

    Keyed by a keyed BLAKE2b digest of the raw credential header (no secret is kept in
    the clear; one C call, a third of an HMAC's cost on this hot path). An entry
    lives ``TTL`` seconds at most, never past its token's expiry, and every commit that
    touches a user or token record (a password change, a deletion, a revocation, in this
    process or another) forgets them all, so the full route decides again at once.
    """

    TTL = 60.0
    MAX = 10_000

    def __init__(self, store: Store, secret: bytes, clock: Callable[[], float] = time.time
                 ) -> None:
        self._key = hashlib.sha256(b"devpid-known-credentials\0" + secret).digest()[:32]
        self._clock = clock
        self._known: OrderedDict[bytes, tuple[str, dict[str, Any] | None, float]] = (
            OrderedDict())
        store.add_commit_listener(self._changed)

    def _changed(self, serial: int, changes: Mapping[str, Any]) -> None:
        if any(key.startswith((keys.USERS, keys.TOKENS)) for key in changes):
            self._known.clear()

    def _id(self, raw: bytes) -> bytes:
        return hashlib.blake2b(raw, key=self._key, digest_size=16).digest()

    def remember(self, raw: bytes, user: str, token: dict[str, Any] | None,
                 until: float | None = None) -> None:
        """``raw`` (the credential header's value) was verified for ``user``; ``token`` is
        the scoped token record it used, ``until`` the wall-clock expiry of its secret."""
        expires = self._clock() + self.TTL
        if until is not None:
            expires = min(expires, until)
        self._known[self._id(raw)] = (user, token, expires)
        while len(self._known) > self.MAX:
            self._known.popitem(last=False)

    def recall(self, raw: bytes) -> tuple[str, dict[str, Any] | None] | None:
        key = self._id(raw)
        entry = self._known.get(key)
        if entry is None:
            return None
        if entry[2] <= self._clock():
            del self._known[key]
            return None
        return entry[0], entry[1]


def credential_header(request: Any) -> bytes | None:
    """The raw credentials a request carries (devpi's X-Devpi-Auth, else HTTP Basic)."""
    headers = request.requestHeaders
    raw = headers.getRawHeaders(b"x-devpi-auth")
    if raw:
        return b"devpi " + raw[0].strip()
    raw = headers.getRawHeaders(b"authorization")
    if raw and raw[0][:6].lower() == b"basic ":
        return b"basic " + raw[0][6:].strip()
    return None


def readable(server: Any, user: str, stage: str) -> bool:
    """``may_read`` remembered per (user, stage) until an index config changes."""
    known = server.readable_stages
    answer = known.get((user, stage))
    if answer is None:
        answer = may_read(server.index_config, user, stage)
        if len(known) > 10_000:
            known.clear()
        known[(user, stage)] = answer
    return answer


def known_reader(server: Any, request: Any, segments: list[bytes], stage: str) -> bool:
    """Whether a read of private ``stage`` may be answered at once: its credentials were
    verified recently (``server.known_credentials``), the user may read the chain, and a
    scoped token's scope covers the request. False sends it through ``require_read``."""
    if request.method not in (b"GET", b"HEAD"):
        return False
    raw = credential_header(request)
    if raw is None:
        return False
    found = server.known_credentials.recall(raw)
    if found is None:
        return False
    user, token = found
    if token is not None:
        from devpid.tokens import check_scope
        from devpid.web.errors import HTTPError

        try:
            check_scope(token, request.method, segments, stage)
        except HTTPError:
            return False
    if not readable(server, user, stage):
        return False
    request.devpid_identity = user
    request.devpid_token = token
    request.devpid_segments = segments
    request.setHeader(b"X-Accel-Expires", b"0")
    request.devpid_private = True
    return True


def fast_readable(server: Any, request: Any, segments: list[bytes]) -> bool:
    """For the fast door: a public index, or a private one ``known_reader`` lets through
    (and the status routes, with --status-acl, never: only their routes check who asks)."""
    if segments[:1] and segments[0] in STATUS_PATHS and status_restricted(server):
        return False
    stage = stage_of(segments)
    return stage is None or public(server, stage) or known_reader(
        server, request, segments, stage)


async def require(server: Any, request: Any, allowed: Callable[[str | None], bool],
                  what: str) -> str | None:
    """The caller, if ``allowed``; else 401 (with a Basic challenge, so pip, uv and curl
    retry with credentials) when no credentials came, 403 when they did."""
    from devpid.web.errors import forbidden, unauthorized

    user: str | None = await server.identify(request)
    if allowed(user):
        return user
    if user is None:
        raise unauthorized(f"authentication required to {what}")
    raise forbidden(f"user {user!r} may not {what}")


async def require_read(server: Any, request: Any, stage: str) -> None:
    """Refuse a caller who may not read ``stage`` (see ``require``)."""
    await require(server, request, lambda user: may_read(server.index_config, user, stage),
                  f"read {stage}")


# -- the server's own status (--status-acl) ------------------------------------------------
STATUS_PATHS = frozenset({b"+status", b"+metrics"})  # what reveals the server's internals


def status_restricted(server: Any) -> bool:
    return not acl_allows(server.settings.status_acl, None)


def may_see_status(server: Any, user: str | None) -> bool:
    """Root and the principals of ``--status-acl`` (also the web view's status card)."""
    return can_see_status(user, server.settings.status_acl)


async def require_status(server: Any, request: Any) -> str | None:
    """``/+status`` and ``/+metrics``: refused to whoever may not see the status."""
    if not status_restricted(server):
        return None  # (the default: nothing to check, nobody to identify)
    return await require(server, request, lambda user: may_see_status(server, user),
                         "see the server's status")


def gate(server: Any, request: Any, segments: list[bytes],
         proceed: Callable[[], Any]) -> Any:
    """``proceed()`` now for public indexes, else after ``require_read`` allowed it."""
    request.devpid_segments = segments  # what a scoped token is checked against
    stage = stage_of(segments)
    if stage is None or public(server, stage) or known_reader(server, request, segments, stage):
        return proceed()
    # Not for shared caches: nginx's micro-cache honours X-Accel-Expires (genconfig.py).
    request.setHeader(b"X-Accel-Expires", b"0")
    request.devpid_private = True
    from devpid.web.errors import HTTPError, render_error

    async def check() -> Any:
        await require_read(server, request, stage)
        return proceed()

    def done(result: Any) -> None:
        if isinstance(result, bytes) and not request.finished:
            request.write(result)
            request.finish()

    def refused(failure: Any) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if failure.check(HTTPError):
            body = render_error(request, failure.value)
        else:
            log.failure("read check failed for {uri}", failure, uri=request.uri)
            body = render_error(request, HTTPError(500, "internal server error (logged)"))
        request.write(body)
        request.finish()

    ensureDeferred(check()).addCallbacks(done, refused)
    return NOT_DONE_YET
