"""Hiding credentials in what devpid shows: index configs are public, their secrets are not.

``mirror_url`` may carry ``user:password@`` and a query token; webhook URLs usually carry
their token in the path or query. Anyone but the index owner and root sees them redacted
(``GET /``, ``/USER``, ``/USER/INDEX``); ``/+status`` is redacted for everyone but root.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devpid.domain.permissions import can_see_secrets

MASK = "***"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s\"']*@")
# a query ends before trailing punctuation ("URL: reason" in error messages)
_QUERY = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s\"'?#]*)\?[^\s\"'#]*[^\s\"'#:,;.)]")


def _netloc(parts: Any) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def redact_url(url: str) -> str:
    """``user:pw@`` and the query of a URL masked; the rest (where it points) kept."""
    try:
        parts = urlsplit(url)
        netloc = _netloc(parts)
    except ValueError:
        return MASK
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_webhook(url: str) -> str:
    """Only the scheme and host of a webhook URL: its path and query are the secret."""
    try:
        parts = urlsplit(url)
        netloc = _netloc(parts)
    except ValueError:
        return MASK
    return f"{parts.scheme}://{netloc}/{MASK}"


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of an index config without credentials (for everyone but owner and root)."""
    out = dict(config)
    if isinstance(out.get("mirror_url"), str):
        out["mirror_url"] = redact_url(out["mirror_url"])
    hooks = out.get("webhooks")
    if isinstance(hooks, list):
        out["webhooks"] = [redact_webhook(h) if isinstance(h, str) else MASK for h in hooks]
    return out


def may_see_secrets(actor: str | None, owner: str) -> bool:
    """Root and the owner (the rule is the domain's)."""
    return can_see_secrets(actor, owner)


def scrub(value: Any) -> Any:
    """Credentials and queries masked in every URL inside strings of a JSON-like value."""
    if isinstance(value, str):
        return _QUERY.sub(rf"\1?{MASK}", _USERINFO.sub(rf"\1{MASK}@", value))
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


__all__ = ["may_see_secrets", "redact_config", "redact_url", "redact_webhook", "scrub"]
