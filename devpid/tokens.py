"""Scoped API tokens: a user mints secrets for CI that may do only some actions on some
indexes until they expire.

A token is ``devpidt1_<id>_<secret>``, used as the Basic-auth password (pip, uv, twine). The
store keeps ``token/<user>/<id>`` with the SHA-256 of the token (never the token) and a
fingerprint of the user's password hash keyed by the token itself, so a password change or
the user's deletion (a new user of that name has another hash) ends every token, and the
record reveals nothing about the hash. What a token may do is the intersection of its scope
and its user's own rights: the scope is checked when the token authenticates a request
(``check_scope``), the ACLs afterwards as for the user.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from devpid.domain import keys
from devpid.store.base import Store
from devpid.web.errors import HTTPError, forbidden

PREFIX = "devpidt1_"
ACTIONS = ("read", "upload", "delete")
MAX_LIFETIME = 366 * 86400
DEFAULT_LIFETIME = 86400
MAX_TOKENS_PER_USER = 100
_TOKEN_RE = re.compile(r"devpidt1_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


def key(user: str, token_id: str) -> str:
    return keys.token(user, token_id)


def looks_like_token(secret: str) -> bool:
    return secret.startswith(PREFIX)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fingerprint(token: str, pwhash: str) -> str:
    return hmac.new(token.encode(), pwhash.encode(), hashlib.sha256).hexdigest()[:32]


def validate_request(body: Any, lookup_index: Any) -> tuple[int, list[str], list[str], str]:
    """(lifetime, indexes, actions, description) of a create request, or a 400."""
    if not isinstance(body, dict):
        raise HTTPError(400, "token request must be a JSON object")
    unknown = set(body) - {"expires_in", "indexes", "actions", "description"}
    if unknown:
        raise HTTPError(400, "unknown token options: " + ", ".join(sorted(unknown)))
    lifetime = body.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not (
            0 < lifetime <= MAX_LIFETIME):
        raise HTTPError(400, f"expires_in must be whole seconds, 1..{MAX_LIFETIME}")
    indexes, actions = body.get("indexes"), body.get("actions", ["read"])
    if not isinstance(indexes, list) or not indexes or not all(
            isinstance(i, str) for i in indexes):
        raise HTTPError(400, "indexes must be a non-empty list of USER/INDEX names")
    missing = [i for i in indexes if i.count("/") != 1 or lookup_index(i) is None]
    if missing:
        raise HTTPError(400, "no such index: " + ", ".join(missing))
    if not isinstance(actions, list) or not actions or not all(a in ACTIONS for a in actions):
        raise HTTPError(400, f"actions must be a non-empty list of {', '.join(ACTIONS)}")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 200:
        raise HTTPError(400, "description must be a string of at most 200 characters")
    return lifetime, list(dict.fromkeys(indexes)), list(dict.fromkeys(actions)), description


def mint(pwhash: str, lifetime: int, indexes: list[str], actions: list[str],
         description: str) -> tuple[str, dict[str, Any]]:
    """(the token, shown once; the record to store)."""
    token_id = secrets.token_hex(8)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = int(time.time())
    record = {"id": token_id, "sha256": _digest(token), "fp": _fingerprint(token, pwhash),
              "created": now, "expires": now + lifetime, "indexes": indexes,
              "actions": actions, "description": description}
    return token, record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A token record as listed: never its digest or fingerprint."""
    return {k: record.get(k) for k in ("id", "created", "expires", "indexes", "actions",
                                       "description")}


def verify(store: Store, user: str, token: str, pwhash: str) -> dict[str, Any] | None:
    """The token's record when ``token`` is ``user``'s, unexpired and minted under the
    current password; else None."""
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    record = store.get(key(user, match.group(1)))
    if not isinstance(record, dict):
        return None
    if not hmac.compare_digest(str(record.get("sha256")), _digest(token)):
        return None
    if not hmac.compare_digest(str(record.get("fp")), _fingerprint(token, pwhash)):
        return None
    expires = record.get("expires")
    if not isinstance(expires, int) or expires <= time.time():
        return None
    return record


def action_of(method: bytes, segments: list[bytes], stage: str | None) -> str | None:
    """What a request does, in token terms; None for what no token may do (manage users or
    indexes, mint tokens, change passwords)."""
    if method in (b"GET", b"HEAD"):
        return "read"
    if stage is None:
        return None
    parts = segments[1:] if segments[:1] == [b"+html"] else segments
    if method in (b"POST", b"PUSH"):
        return "upload"
    if method == b"DELETE" and len([p for p in parts if p]) > 2:
        return "delete"
    return None


def check_scope(record: dict[str, Any], method: bytes, segments: list[bytes],
                stage: str | None) -> None:
    """403 unless the token's scope covers this request."""
    action = action_of(method, segments, stage)
    if action is None:
        raise forbidden("a scoped token may not do this; use the password")
    if action not in (record.get("actions") or []):
        raise forbidden(f"this token may not {action}")
    if stage is not None and stage not in (record.get("indexes") or []):
        raise forbidden(f"this token is not valid for {stage}")


def check_target(request: Any, target: str) -> None:
    """403 when a scoped token made ``request`` and ``target`` (an index the request writes
    to besides the one in its path, as a push does) is outside the token's indexes."""
    record = getattr(request, "devpid_token", None)
    if record is not None and target not in (record.get("indexes") or []):
        raise forbidden(f"this token is not valid for {target}")
