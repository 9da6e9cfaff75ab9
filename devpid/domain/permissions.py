"""Who may do what: every permission rule of the server, as pure functions.

The web layer, replication, the mirror and import/export ask here instead of spelling rules
out, so a rule reads (and is tested, ``tests/test_domain.py``) in one place. Each check takes
the caller's identity (a user name, or None for anonymous) and the settings or index config
that decide it; none reads the store, so they are cheap and safe on the reactor thread.

devpi's principals: a user name, ``:ANONYMOUS:`` (everyone) and ``:AUTHENTICATED:`` (any
logged-in user); the special ones are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from devpid.model.indexes import resolution_order

ROOT = "root"
ANONYMOUS = ":ANONYMOUS:"
AUTHENTICATED = ":AUTHENTICATED:"

Identity = str | None
Lookup = Callable[[str], Mapping[str, Any] | None]


def is_root(actor: Identity) -> bool:
    return actor == ROOT


def owner_of(stage: str) -> str:
    """The user owning a ``user/index`` stage."""
    return stage.split("/", 1)[0]


def acl_allows(acl: list[str], user: Identity) -> bool:
    """Whether one of devpi's principal lists names ``user`` (or everyone)."""
    for principal in acl:
        p = principal.upper() if principal.startswith(":") else principal
        if p == ANONYMOUS:
            return True
        if user is not None and (p == AUTHENTICATED or principal == user):
            return True
    return False


# -- users and index configs (--restrict-modify, --mirror-admins) --------------------------
def can_manage_user(actor: Identity, target: str, restrict: list[str] | None = None) -> bool:
    """root and the user itself; with --restrict-modify, root and the listed users instead."""
    if actor is None:
        return False
    if restrict is not None:
        return is_root(actor) or actor in restrict
    return is_root(actor) or actor == target


def can_manage_index(actor: Identity, owner: str, restrict: list[str] | None = None) -> bool:
    """Create, change and delete an index: as for managing its owner."""
    return can_manage_user(actor, owner, restrict)


def can_create_user(actor: Identity, restrict: list[str] | None) -> bool:
    """Open registration unless --restrict-modify names who may create users."""
    return restrict is None or can_manage_user(actor, "", restrict)


def can_modify_user(actor: Identity, target: str, fields: set[str],
                    restrict: list[str] | None) -> bool:
    """Change a user's record (``fields`` of it): a user may always change its own
    password, even under --restrict-modify; anything else as for managing the user."""
    own_password = actor == target and fields <= {"password"}
    return own_password or can_manage_user(actor, target, restrict)


def can_set_pwhash(actor: Identity) -> bool:
    """A chosen bcrypt hash (or its cost) is a way to stall the server: root (import) only."""
    return is_root(actor)


def can_delete_user(actor: Identity, target: str, restrict: list[str] | None) -> bool:
    """root is never deleted; with --restrict-modify nobody deletes themselves (only the
    listed users delete, and one of them deleting itself would lock the others out)."""
    if target == ROOT or not can_manage_user(actor, target, restrict):
        return False
    return not (restrict is not None and actor == target)


def can_manage_tokens(actor: Identity, target: str) -> bool:
    """A user's API tokens: root and the user itself (never --restrict-modify's list)."""
    return actor is not None and actor in (ROOT, target)


def can_set_mirror(actor: Identity, mirror_admins: list[str]) -> bool:
    """Creating mirror indexes and choosing mirror_url (what devpid connects to): root and
    --mirror-admins (``:AUTHENTICATED:`` there restores devpi's "any user")."""
    return actor is not None and (is_root(actor) or acl_allows(mirror_admins, actor))


def can_see_secrets(actor: Identity, owner: str) -> bool:
    """Unredacted index configs and user emails: root and the owner."""
    return actor is not None and actor in (ROOT, owner)


def can_see_status(actor: Identity, status_acl: list[str]) -> bool:
    """``/+status`` and ``/+metrics``: root and the principals of ``--status-acl``."""
    return is_root(actor) or acl_allows(status_acl, actor)


# -- uploads, deletes (acl_upload, acl_toxresult_upload) -----------------------------------
def upload_acl(config: Mapping[str, Any]) -> list[str]:
    value = config.get("acl_upload")
    return value if isinstance(value, list) else []


def toxresult_acl(config: Mapping[str, Any]) -> list[str]:
    """``acl_toxresult_upload``, default everyone (as devpi)."""
    value = config.get("acl_toxresult_upload")
    return value if isinstance(value, list) else [ANONYMOUS]


def can_upload(actor: Identity, owner: str, acl_upload: list[str]) -> bool:
    """root and the principals of acl_upload (the owner only if listed, as devpi)."""
    if is_root(actor):
        return True
    return acl_allows(acl_upload, actor)


def can_upload_to(actor: Identity, owner: str, config: Mapping[str, Any]) -> bool:
    """Upload (and push into) the index ``config`` configures."""
    return can_upload(actor, owner, upload_acl(config))


def can_upload_toxresult(actor: Identity, owner: str, config: Mapping[str, Any]) -> bool:
    return can_upload(actor, owner, toxresult_acl(config))


def can_delete_entry(actor: Identity, owner: str, acl_upload: list[str]) -> bool:
    """Delete and yank: root, the owner and users *named* in acl_upload. Unlike devpi, the
    special principals (``:ANONYMOUS:``, ``:AUTHENTICATED:``) grant uploads only, so an open
    upload index does not let every logged-in user delete its releases."""
    if can_manage_index(actor, owner):
        return True
    named = [p for p in acl_upload if not p.startswith(":")]
    return actor is not None and actor in named


def can_delete_from(actor: Identity, owner: str, config: Mapping[str, Any]) -> bool:
    return can_delete_entry(actor, owner, upload_acl(config))


# -- reads (acl_read) ------------------------------------------------------------------------
def read_acl(config: Mapping[str, Any]) -> list[str]:
    """``acl_read``; absent means everyone, so configs that never set it read as before."""
    value = config.get("acl_read")
    return value if isinstance(value, list) else [ANONYMOUS]


def can_read_index(actor: Identity, stage: str, config: Mapping[str, Any]) -> bool:
    """This one index (not its bases): root, the owner, or a principal of acl_read."""
    if actor is not None and (is_root(actor) or actor == owner_of(stage)):
        return True
    return acl_allows(read_acl(config), actor)


def can_read(lookup: Lookup, actor: Identity, stage: str) -> bool:
    """``stage`` and everything it inherits: an index whose base you cannot read serves
    nothing of that base to you."""
    return all(can_read_index(actor, name, config)
               for name, config in resolution_order(stage, lookup))
