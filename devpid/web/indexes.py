"""Index routes: create, read, modify and delete ``/USER/INDEX`` (devpi's JSON API)."""

from __future__ import annotations

from typing import Any

from devpid.domain import keys
from devpid.domain.permissions import can_manage_index, can_set_mirror
from devpid.model.indexes import (
    ACL_KEYS,
    IndexConfigError,
    apply_changes,
    apply_patch_ops,
    check_bases,
    new_config,
)
from devpid.model.names import normalize_name, validate_user_or_index_name
from devpid.redact import may_see_secrets, redact_config
from devpid.web.app import (
    DevpidServer,
    app,
    json_response,
    query_flag,
    read_json,
    set_serial,
)
from devpid.web.errors import HTTPError, forbidden, not_found
from devpid.web.users import _identify_lenient, delete_stage_keys

# Other modules (simple API, push, uploads) answer GET and POST of the index URL first:
# server.index_get_hooks / index_post_hooks, wired by devpid.node.build_node.


def stage_projects(server: DevpidServer, stage: str, config: dict[str, Any]) -> list[str]:
    """Names of the projects this stage itself holds (private uploads or cached mirror pages)."""
    kind = "mirror" if config.get("type") == "mirror" else "project"
    prefix = f"{kind}/{stage}/"
    return sorted(key[len(prefix) :] for key in server.store.keys(prefix))


def require_index(server: DevpidServer, stage: str) -> dict[str, Any]:
    config = server.index_config(stage)
    if config is None:
        raise not_found(f"The stage {stage} could not be found.")
    return config


def _validate(
    server: DevpidServer, stage: str, config: dict[str, Any], old: dict[str, Any] | None = None
) -> None:
    bases = config.get("bases") or []
    try:
        check_bases(stage, bases, server.index_config)
    except IndexConfigError as e:
        raise HTTPError(400, str(e)) from None
    _check_acl_names(server, config, old or {})


def _check_acl_names(server: DevpidServer, config: dict[str, Any], old: dict[str, Any]) -> None:
    """Newly named ACL users must exist: whoever registered a named-but-missing user later
    would get its rights. Names starting with ':' (``:ANONYMOUS:``, ``:AUTHENTICATED:``,
    devpi's ``:group`` principals) are no user names and pass."""
    unknown: list[str] = []
    for key in ACL_KEYS:
        before = set(old.get(key) or [])
        for name in config.get(key) or []:
            if name.startswith(":") or name in before or name in unknown:
                continue
            if server.user_record(name) is None:
                unknown.append(name)
    if unknown:
        raise HTTPError(400, "ACL names unknown users: " + ", ".join(unknown))


def _require_mirror_permission(server: DevpidServer, actor: str, stage: str) -> None:
    if not can_set_mirror(actor, server.settings.mirror_admins):
        raise forbidden(
            f"no permission to create a mirror index or set mirror_url on {stage} "
            "(root and --mirror-admins only)"
        )


@app.route("/<user>/<index>", methods=["GET"])
@app.route("/<user>/<index>/", methods=["GET"])
async def get_index(server: DevpidServer, request: Any, user: str, index: str) -> Any:
    for hook in server.index_get_hooks:
        result = await hook(server, request, user, index)
        if result is not None:
            return result
    stage = f"{user}/{index}"
    config = require_index(server, stage)
    actor = await _identify_lenient(server, request)
    result = dict(config) if may_see_secrets(actor, user) else redact_config(config)
    if not query_flag(request, b"no_projects"):
        result["projects"] = stage_projects(server, stage, config)
    return json_response(request, result=result, type="indexconfig")


@app.route("/<user>/<index>", methods=["PUT"])
@app.route("/<user>/<index>/", methods=["PUT"])
async def create_index(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    stage = f"{user}/{index}"
    if server.user_record(user) is None:  # 404 before any credential check, as devpi
        raise not_found(f"user '{user}' does not exist")
    actor = await server.require_user(request)
    error = validate_user_or_index_name(index)
    if error:
        raise HTTPError(400, error)
    if not can_manage_index(actor, user, server.settings.restrict_modify):
        raise forbidden(f"no permission to create index {stage}")
    if server.index_config(stage) is not None:
        raise HTTPError(409, f"index '{stage}' exists")
    body = read_json(request)
    if body is None:
        body = {}
    try:
        config = new_config(
            user,
            body,
            default_cache_expiry=server.settings.mirror_cache_expiry,
            normalize=normalize_name,
        )
    except IndexConfigError as e:
        raise HTTPError(400, str(e)) from None
    if config.get("type") == "mirror":
        _require_mirror_permission(server, actor, stage)
    _validate(server, stage, config)
    async with server.store.write() as tx:
        if tx.get(keys.index_of_stage(stage)) is not None:  # created while this one waited
            raise HTTPError(409, f"index '{stage}' exists")
        tx.set(keys.index_of_stage(stage), config)
    set_serial(request, tx.serial)
    return json_response(request, result=config, type="indexconfig")


@app.route("/<user>/<index>", methods=["PATCH"])
@app.route("/<user>/<index>/", methods=["PATCH"])
async def modify_index(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    stage = f"{user}/{index}"
    config = require_index(server, stage)
    actor = await server.require_user(request)
    if not can_manage_index(actor, user, server.settings.restrict_modify):
        raise forbidden(f"no permission to modify index {stage}")
    body = read_json(request)
    new = dict(config)
    try:
        if isinstance(body, list):
            apply_patch_ops(new, body, normalize_name)
        elif isinstance(body, dict):
            if body.get("type") == "indexconfig" and isinstance(body.get("result"), dict):
                body = body["result"]
            changes = {k: v for k, v in body.items() if k != "projects"}
            apply_changes(new, changes, normalize_name)
        else:
            raise IndexConfigError("PATCH body must be a JSON object or a list of key=value")
    except IndexConfigError as e:
        raise HTTPError(400, str(e)) from None
    if new.get("mirror_url") != config.get("mirror_url"):
        _require_mirror_permission(server, actor, stage)
    _validate(server, stage, new, config)
    if new == config and query_flag(request, b"error_on_noop"):
        raise HTTPError(400, "The requested modifications resulted in no changes")
    async with server.store.write() as tx:
        tx.set(keys.index_of_stage(stage), new)
    set_serial(request, tx.serial)
    return json_response(request, result=new, type="indexconfig")


@app.route("/<user>/<index>", methods=["DELETE"])
@app.route("/<user>/<index>/", methods=["DELETE"])
async def delete_index(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    stage = f"{user}/{index}"
    config = require_index(server, stage)
    actor = await server.require_user(request)
    if not can_manage_index(actor, user, server.settings.restrict_modify):
        raise forbidden(f"no permission to delete index {stage}")
    if not config.get("volatile", True) and not query_flag(request, b"force"):
        raise forbidden(f"index {stage} non-volatile, cannot delete")
    dependants = [
        keys.stage_name(key)
        for key, other in server.store.items(keys.INDEXES)
        if stage in (other.get("bases") or [])
    ]
    if dependants:
        raise forbidden(
            f"index {stage} is a base of {', '.join(sorted(dependants))}; remove it there first"
        )
    async with server.store.write() as tx:
        delete_stage_keys(tx, f"{stage}/")
        tx.delete(keys.index_of_stage(stage))
    set_serial(request, tx.serial)
    return json_response(request, message=f"index {stage} deleted", code=201)


@app.route("/<user>/<index>", methods=["POST", "PUSH"])
@app.route("/<user>/<index>/", methods=["POST", "PUSH"])
async def post_index(server: DevpidServer, request: Any, user: str, index: str) -> Any:
    for hook in server.index_post_hooks:
        result = await hook(server, request, user, index)
        if result is not None:
            return result
    require_index(server, f"{user}/{index}")
    raise HTTPError(400, "uploads and push are not supported yet")
