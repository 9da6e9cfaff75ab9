"""Who may see what in the web view: the one place a read permission check goes.

Every page, listing and search result asks ``may_read`` (the index's ``acl_read`` and its
bases', devpid/readacl.py) before showing an index or anything in it.
"""

from __future__ import annotations

from typing import Any

from devpid import readacl
from devpid.domain import keys
from devpid.domain.permissions import is_root, owner_of
from devpid.redact import may_see_secrets, redact_config, scrub
from devpid.web.errors import HTTPError


async def viewer(server: Any, request: Any) -> str | None:
    """The logged-in user, or None; bad credentials count as anonymous for reading."""
    try:
        return await server.identify(request)
    except HTTPError:
        return None


def may_read(server: Any, viewer: str | None, stage: str, config: dict[str, Any]) -> bool:
    """Whether ``viewer`` may see index ``stage`` (its config, projects, files, docs) and
    everything it inherits (devpid/readacl.py)."""
    return readacl.may_read(server.index_config, viewer, stage)


def visible_config(viewer: str | None, stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config as this viewer may see it: credentials (mirror_url, webhooks) only for the
    owner and root, as the JSON API shows them (devpid/redact.py)."""
    if may_see_secrets(viewer, owner_of(stage)):
        return config
    return redact_config(config)


def visible_status(viewer: str | None, status: dict[str, Any]) -> dict[str, Any]:
    """``/+status`` as this viewer may see it: URLs in errors masked for all but root."""
    return status if is_root(viewer) else dict(scrub(status))


def readable_indexes(server: Any, viewer: str | None,
                     prefix: str = keys.INDEXES) -> list[tuple[str, dict[str, Any]]]:
    """(stage, config as the viewer may see it) of every index under ``prefix`` the viewer
    may read, sorted."""
    out = []
    for key, config in server.store.items(prefix):
        stage = keys.stage_name(key)
        if isinstance(config, dict) and may_read(server, viewer, stage, config):
            out.append((stage, visible_config(viewer, stage, config)))
    return sorted(out)
