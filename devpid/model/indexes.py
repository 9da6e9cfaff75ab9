"""Index configurations: devpi's keys, value coercion, validation and the PATCH forms.

Pure functions over plain dicts; the web layer turns ``IndexConfigError`` into a 400.
Unlike devpi-server, bases that would form a cycle or name a missing index are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from devpid.mirror.policy import POLICY_KEYS, PolicyError, coerce_policy_value

DEFAULT_MIRROR_CACHE_EXPIRY = 1800

STAGE_DEFAULTS: dict[str, Any] = {
    "type": "stage",
    "volatile": True,
    "acl_upload": None,  # filled with the owner
    "acl_toxresult_upload": [":ANONYMOUS:"],
    "bases": [],
    "mirror_whitelist": [],
    "mirror_whitelist_inheritance": "intersection",
}
# acl_read: absent means [":ANONYMOUS:"] (devpid/readacl.py), so old configs read as before.
STAGE_OPTIONAL = ("title", "description", "custom_data", "webhooks", "acl_read")

MIRROR_DEFAULTS: dict[str, Any] = {
    "type": "mirror",
    "volatile": True,
    "mirror_url": None,
    "mirror_cache_expiry": None,  # filled with the server default
    "mirror_no_project_list": False,
    "mirror_ignore_serial_header": False,
    "mirror_use_external_urls": False,
    "mirror_provides_core_metadata": False,
}
MIRROR_OPTIONAL = (
    "title", "description", "custom_data", "mirror_web_url_fmt", "webhooks", "acl_read",
    *POLICY_KEYS,
)
# Keys that old exports put on mirrors and devpi silently drops.
MIRROR_DROPPED = ("bases", "acl_upload", "mirror_whitelist", "pypi_whitelist")

BOOL_KEYS = {
    "volatile",
    "mirror_no_project_list",
    "mirror_ignore_serial_header",
    "mirror_use_external_urls",
    "mirror_provides_core_metadata",
}
LIST_KEYS = {
    "acl_upload", "acl_toxresult_upload", "acl_read", "bases", "mirror_whitelist", "webhooks",
    "mirror_min_age_exempt",
}
ACL_KEYS = {"acl_upload", "acl_toxresult_upload", "acl_read"}


class IndexConfigError(ValueError):
    """An index configuration that cannot be accepted; the message says why."""


def coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise IndexConfigError(f"Unknown boolean value {value!r}.")


def coerce_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, list | tuple):
        out = []
        for x in value:
            if not isinstance(x, str):
                raise IndexConfigError(f"list items must be strings, got {x!r}")
            if x.strip():
                out.append(x.strip())
        return out
    raise IndexConfigError(f"expected a list or a comma separated string, got {value!r}")


def _coerce_acl(items: list[str]) -> list[str]:
    return [x.upper() if x.lower() in (":anonymous:", ":authenticated:") else x for x in items]


def allowed_keys(index_type: str) -> set[str]:
    if index_type == "mirror":
        return set(MIRROR_DEFAULTS) | set(MIRROR_OPTIONAL)
    return set(STAGE_DEFAULTS) | set(STAGE_OPTIONAL)


def coerce_value(key: str, value: Any, normalize: Callable[[str], str]) -> Any:
    """Turn the strings devpi-client sends (``volatile=False``) into typed values."""
    if key in BOOL_KEYS:
        return coerce_bool(value)
    if key in LIST_KEYS:
        items = coerce_list(value)
        if key in ACL_KEYS:
            items = _coerce_acl(items)
        if key == "mirror_whitelist":
            items = [x if x == "*" else normalize(x) for x in items]
        if key == "mirror_min_age_exempt":
            items = [normalize(x) for x in items]
        # keep order, drop duplicates
        return list(dict.fromkeys(items))
    if key == "mirror_cache_expiry":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise IndexConfigError("'mirror_cache_expiry' option must be an integer") from None
    if key in POLICY_KEYS:
        try:
            return coerce_policy_value(key, value)
        except PolicyError as e:
            raise IndexConfigError(str(e)) from None
    if key == "mirror_url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise IndexConfigError("'mirror_url' option must be a URL.")
        return value
    if key == "mirror_whitelist_inheritance":
        if value not in ("intersection", "union"):
            raise IndexConfigError(
                f"Unknown value {value!r} for mirror_whitelist_inheritance, "
                "must be 'intersection' or 'union'."
            )
        return value
    if key in ("title", "description", "mirror_web_url_fmt") and not isinstance(value, str):
        return str(value)
    return value


def new_config(
    owner: str,
    raw: Mapping[str, Any],
    *,
    default_cache_expiry: int,
    normalize: Callable[[str], str],
) -> dict[str, Any]:
    """A complete config for a new index from what the client sent (strings allowed)."""
    if not isinstance(raw, Mapping):
        raise IndexConfigError("index config must be a JSON object")
    index_type = raw.get("type", "stage")
    if index_type not in ("stage", "mirror"):
        raise IndexConfigError(f"unknown index type {index_type!r}")
    if index_type == "mirror":
        config = dict(MIRROR_DEFAULTS)
        config["mirror_cache_expiry"] = default_cache_expiry
        raw = {k: v for k, v in raw.items() if k not in MIRROR_DROPPED}
    else:
        config = dict(STAGE_DEFAULTS)
        config["acl_upload"] = [owner]
    apply_changes(config, {k: v for k, v in raw.items() if k != "type"}, normalize)
    if index_type == "mirror" and not config.get("mirror_url"):
        # devpi mirrors PyPI when no URL is given; store it so the config says so
        from devpid.init import default_upstream_url

        config["mirror_url"] = default_upstream_url()
    return config


def apply_changes(
    config: dict[str, Any], raw: Mapping[str, Any], normalize: Callable[[str], str]
) -> None:
    """Validate and merge ``raw`` into ``config`` in place (all errors reported together)."""
    allowed = allowed_keys(config["type"])
    unknown = [f"{k}={v}" for k, v in raw.items() if k not in allowed]
    if unknown:
        raise IndexConfigError(
            "indexconfig got unexpected keyword arguments: " + ", ".join(sorted(unknown))
        )
    errors = []
    for key, value in raw.items():
        if key == "type":
            if value != config["type"]:
                errors.append("the 'type' of an index can't be changed")
            continue
        try:
            config[key] = coerce_value(key, value, normalize)
        except IndexConfigError as e:
            errors.append(str(e))
    if errors:
        raise IndexConfigError(", ".join(errors))


def apply_patch_ops(
    config: dict[str, Any], ops: list[Any], normalize: Callable[[str], str]
) -> None:
    """devpi's ``server-keyvalue-parsing`` PATCH form: ``k=v``, ``k+=v``, ``k-=v``, ``k-=``."""
    defaults = MIRROR_DEFAULTS if config["type"] == "mirror" else STAGE_DEFAULTS
    for op in ops:
        if not isinstance(op, str) or "=" not in op:
            raise IndexConfigError(f"PATCH item {op!r} is not of the form key=value")
        pos = op.index("=")
        marker = op[pos - 1] if pos else ""
        value = op[pos + 1 :]
        if marker == "+":
            key = op[: pos - 1]
            _check_list_key(config, key)
            current = list(config.get(key) or [])
            for item in coerce_value(key, value, normalize):
                if item not in current:
                    current.append(item)
            config[key] = current
        elif marker == "-":
            key = op[: pos - 1]
            if value == "":
                if key in defaults:
                    raise IndexConfigError("Default values can't be removed.")
                config.pop(key, None)
                continue
            _check_list_key(config, key)
            current = list(config.get(key) or [])
            for item in coerce_value(key, value, normalize):
                if item not in current:
                    raise IndexConfigError(f"The '{key}' setting doesn't have value '{item}'")
                current.remove(item)
            config[key] = current
        else:
            apply_changes(config, {op[:pos]: value}, normalize)


def _check_list_key(config: dict[str, Any], key: str) -> None:
    if key not in allowed_keys(config["type"]):
        raise IndexConfigError(f"indexconfig got unexpected keyword arguments: {key}")
    if key not in LIST_KEYS:
        raise IndexConfigError(f"The '{key}' setting is not a list")


def check_bases(
    name: str, bases: list[str], lookup: Callable[[str], Mapping[str, Any] | None]
) -> None:
    """Refuse malformed, missing or cyclic bases (devpi accepts the latter two)."""
    errors = []
    for base in bases:
        if base.count("/") != 1 or not all(base.split("/")):
            errors.append(f"invalid base index spec: {base!r}")
        elif lookup(base) is None:
            errors.append(f"base index {base!r} does not exist")
    if errors:
        raise IndexConfigError(", ".join(errors))
    # depth-first search for a path back to ``name``
    stack = list(bases)
    seen: set[str] = set()
    while stack:
        current = stack.pop()
        if current == name:
            raise IndexConfigError(f"bases would form a cycle: {name} inherits from itself")
        if current in seen:
            continue
        seen.add(current)
        config = lookup(current)
        if config:
            stack.extend(config.get("bases") or [])


def resolution_order(
    name: str, lookup: Callable[[str], Mapping[str, Any] | None]
) -> list[tuple[str, Mapping[str, Any]]]:
    """The stages to search for ``name``: itself, then bases depth-first in configured order,
    each once; mirrors always last (so private releases win)."""
    order: list[tuple[str, Mapping[str, Any]]] = []
    mirrors: list[tuple[str, Mapping[str, Any]]] = []
    seen: set[str] = set()

    def visit(stage: str) -> None:
        if stage in seen:
            return
        seen.add(stage)
        config = lookup(stage)
        if config is None:
            return
        (mirrors if config.get("type") == "mirror" else order).append((stage, config))
        for base in config.get("bases") or ():
            visit(base)

    visit(name)
    return order + mirrors
