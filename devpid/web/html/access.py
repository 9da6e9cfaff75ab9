"""Who may see what in the web view: the one place a read permission check goes.

devpid has no read permissions yet (every index is readable by anyone, as in devpi), so
``may_read`` allows everything. Every page, listing and search result asks it before showing
an index or anything in it, so a future ``acl_read`` is one change here.
"""

from __future__ import annotations

from typing import Any

from devpid.web.errors import HTTPError


async def viewer(server: Any, request: Any) -> str | None:
    """The logged-in user, or None; bad credentials count as anonymous for reading."""
    try:
        return await server.identify(request)
    except HTTPError:
        return None


def may_read(server: Any, viewer: str | None, stage: str, config: dict[str, Any]) -> bool:
    """Whether ``viewer`` may see index ``stage`` (its config, projects, files, docs)."""
    return True


def readable_indexes(server: Any, viewer: str | None,
                     prefix: str = "index/") -> list[tuple[str, dict[str, Any]]]:
    """(stage, config) of every index under ``prefix`` the viewer may read, sorted."""
    out = []
    for key, config in server.store.items(prefix):
        stage = key[len("index/"):]
        if isinstance(config, dict) and may_read(server, viewer, stage, config):
            out.append((stage, config))
    return sorted(out)
