"""Read permissions (``acl_read``): who may see an index, and the one gate every read passes.

An index is readable by root, its owner and the principals in its ``acl_read`` (default
``[":ANONYMOUS:"]``, so servers that never set it behave as before). Reading an index reads
its whole inheritance chain, so it is refused unless *every* index in the chain is readable:
an index whose base you cannot read serves nothing of that base to you.

The gate sits in the root resource before the fast paths, the web view and Klein: any
request under ``/USER/INDEX/...`` (or ``/+html/USER/INDEX/...``) whose chain is not
anonymously readable skips the fast paths and caches and is checked after authentication.
Fast paths only ever answer for chains that anyone may read, so an answer cached for one
caller can never reach another who may not read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from devpid.auth import ANONYMOUS, acl_allows
from devpid.model.indexes import resolution_order

# devpid.web.errors is imported where used: the web package imports this module.

log = Logger()
Lookup = Callable[[str], Mapping[str, Any] | None]


def read_acl(config: Mapping[str, Any]) -> list[str]:
    value = config.get("acl_read")
    return value if isinstance(value, list) else [ANONYMOUS]


def may_read_index(user: str | None, stage: str, config: Mapping[str, Any]) -> bool:
    """This one index (not its bases): root, the owner, or a principal of acl_read."""
    if user is not None and (user == "root" or user == stage.split("/", 1)[0]):
        return True
    return acl_allows(read_acl(config), user)


def may_read(lookup: Lookup, user: str | None, stage: str) -> bool:
    """Whether ``user`` may read ``stage`` and everything it inherits."""
    return all(may_read_index(user, name, config)
               for name, config in resolution_order(stage, lookup))


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


def public_path(server: Any, segments: list[bytes]) -> bool:
    """For fast paths: whether the request's index (if any) is readable by anyone."""
    stage = stage_of(segments)
    return stage is None or public(server, stage)


async def require_read(server: Any, request: Any, stage: str) -> None:
    """401 (with a Basic challenge, so pip and uv retry with credentials) when no
    credentials came, 403 when they did but name someone who may not read ``stage``."""
    from devpid.web.errors import forbidden, unauthorized

    user = await server.identify(request)
    if may_read(server.index_config, user, stage):
        return
    if user is None:
        raise unauthorized(f"authentication required to read {stage}")
    raise forbidden(f"user {user!r} may not read {stage}")


def gate(server: Any, request: Any, segments: list[bytes],
         proceed: Callable[[], Any]) -> Any:
    """``proceed()`` now for public indexes, else after ``require_read`` allowed it."""
    request.devpid_segments = segments  # what a scoped token is checked against
    stage = stage_of(segments)
    if stage is None or public(server, stage):
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
