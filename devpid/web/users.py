"""Server-level routes: API discovery, login, status, and users (devpi's JSON API)."""

from __future__ import annotations

import time
from typing import Any

import devpid
from devpid import metrics as prometheus
from devpid.auth import TOKEN_LIFETIME, acceptable_pwhash
from devpid.domain import keys
from devpid.domain.permissions import (
    can_create_user,
    can_delete_user,
    can_modify_user,
    can_set_pwhash,
    is_root,
)
from devpid.model.names import validate_user_or_index_name
from devpid.readacl import may_read, require_status
from devpid.redact import may_see_secrets, redact_config, scrub
from devpid.web.app import DevpidServer, app, json_response, read_json, set_serial
from devpid.web.errors import HTTPError, forbidden, not_found

USER_INPUT_KEYS = {"password", "pwhash", "email", "title", "description", "custom_data"}
PUBLIC_HIDDEN = {"pwhash", "pwsalt", "password"}


def utcnow() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _api_config(server: DevpidServer, request: Any, user: str | None) -> dict[str, Any]:
    base = server.outside_url(request)
    return {
        "login": f"{base}/+login",
        "authstatus": ["ok", user, []] if user else ["noauth", "", []],
        "features": sorted(
            ["push-no-docs", "push-only-docs", "push-register-project", "server-keyvalue-parsing"]
        ),
    }


async def _identify_lenient(server: DevpidServer, request: Any) -> str | None:
    """For read views: invalid credentials mean anonymous (as devpi's /+api reports)."""
    try:
        return await server.identify(request)
    except HTTPError:
        return None


@app.route("/+api", methods=["GET"])
@app.route("/<user>/+api", methods=["GET"])
async def api_root(server: DevpidServer, request: Any, user: str | None = None) -> bytes:
    who = await _identify_lenient(server, request)
    return json_response(request, result=_api_config(server, request, who), type="apiconfig")


@app.route("/<user>/<index>/+api", methods=["GET"])
async def api_index(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    who = await _identify_lenient(server, request)
    stage = f"{user}/{index}"
    config = server.index_config(stage)
    if config is None:
        raise not_found(f"The stage {stage} could not be found.")
    result = _api_config(server, request, who)
    base = server.outside_url(request)
    result["index"] = f"{base}/{stage}"
    result["simpleindex"] = f"{base}/{stage}/+simple/"
    if config.get("type") != "mirror":
        result["pypisubmit"] = f"{base}/{stage}/"
    return json_response(request, result=result, type="apiconfig")


@app.route("/+login", methods=["POST"])
async def login(server: DevpidServer, request: Any) -> bytes:
    body = read_json(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("user"), str)
        or not isinstance(body.get("password"), str)
    ):
        raise HTTPError(400, "Bad request: no user/password specified")
    name, password = body["user"], body["password"]
    record = server.user_record(name)
    pwhash = record.get("pwhash") if record else None
    if not pwhash or not await server.check_password(name, password, pwhash, request):
        raise HTTPError(401, f"user {name!r} could not be authenticated")
    token = server.tokens.issue(name, pwhash)
    return json_response(
        request,
        result={"password": token, "expiration": TOKEN_LIFETIME},
        type="proxyauth",
        message="login successful",
    )


def status_result(server: DevpidServer) -> dict[str, Any]:
    """What ``/+status`` answers (and ``/+metrics`` turns into numbers)."""
    store = server.store
    result: dict[str, Any] = {
        "serverdir": str(server.settings.serverdir),
        "uuid": store.uuid,
        "versioninfo": {"devpi-server": devpid.DEVPI_SERVER_COMPAT, "devpid": devpid.__version__},
        "server-code": "devpid",
        "host": server.settings.host,
        "port": server.settings.port,
        "outside-url": server.settings.outside_url,
        "serial": store.serial,
        "last-commit-timestamp": store.last_commit_time(),
        "role": "REPLICA" if server.settings.role == "replica" else "MASTER",
        "started": server.started,
    }
    for provider in server.status_providers:
        result.update(provider())
    return result


@app.route("/+status", methods=["GET"])
async def status(server: DevpidServer, request: Any) -> bytes:
    await require_status(server, request)
    result = status_result(server)
    if not is_root(await _identify_lenient(server, request)):
        result = scrub(result)  # upstream and webhook errors may name credentials
    return json_response(request, result=result, type="status")


@app.route("/+metrics", methods=["GET"])
async def metrics(server: DevpidServer, request: Any) -> bytes:
    """Prometheus text: the status as gauges, plus request counters (see devpid/metrics.py)."""
    await require_status(server, request)
    request.setHeader(b"Content-Type", prometheus.CONTENT_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return prometheus.render(status_result(server), server.request_counters)


# -- users -------------------------------------------------------------------------------------
def public_user(
    server: DevpidServer, name: str, record: dict[str, Any], viewer: str | None = "root"
) -> dict[str, Any]:
    """A user as shown; the email and index credentials only to the user and root
    (devpid/redact.py): a listing must not hand out everyone's address."""
    out = {k: v for k, v in record.items() if k not in PUBLIC_HIDDEN}
    out["username"] = name
    secrets_ok = may_see_secrets(viewer, name)
    if not secrets_ok and not server.settings.public_emails:
        out.pop("email", None)
    out["indexes"] = {
        keys.last_part(key): config if secrets_ok else redact_config(config)
        for key, config in server.store.items(keys.index_prefix(name))
        if may_read(server.index_config, viewer, keys.stage_name(key))
    }
    return out


@app.route("/", methods=["GET"])
async def list_users(server: DevpidServer, request: Any) -> bytes:
    viewer = await _identify_lenient(server, request)
    result = {
        keys.user_name(key): public_user(server, keys.user_name(key), record, viewer)
        for key, record in server.store.items(keys.USERS)
    }
    return json_response(request, result=result, type="list:userconfig")


@app.route("/<user>", methods=["GET"])
@app.route("/<user>/", methods=["GET"])
async def get_user(server: DevpidServer, request: Any, user: str) -> bytes:
    record = server.user_record(user)
    if record is None:
        raise not_found(f"user '{user}' does not exist")
    viewer = await _identify_lenient(server, request)
    return json_response(request, result=public_user(server, user, record, viewer),
                         type="userconfig")


@app.route("/<user>", methods=["PUT"])
@app.route("/<user>/", methods=["PUT"])
async def create_user(server: DevpidServer, request: Any, user: str) -> bytes:
    error = validate_user_or_index_name(user)
    if error:
        raise HTTPError(400, error)
    body = read_json(request)
    if not isinstance(body, dict):
        raise HTTPError(400, "user config must be a JSON object")
    unknown = sorted(set(body) - USER_INPUT_KEYS)
    if unknown:
        raise HTTPError(400, "Unknown keys in user config: " + ", ".join(unknown))
    if server.user_record(user) is not None:
        raise HTTPError(409, "user already exists")
    restrict = server.settings.restrict_modify
    if restrict is not None or "pwhash" in body:
        actor = await server.identify(request)
        if not can_create_user(actor, restrict):
            raise forbidden(f"no permission to create user {user} (--restrict-modify)")
        if "pwhash" in body and not can_set_pwhash(actor):
            # a chosen hash (or its cost) is a way to stall the server: root (import) only
            raise forbidden("only root may set pwhash")
    password = body.get("password")
    if not isinstance(password, str) and not body.get("pwhash"):
        raise HTTPError(400, "password needs to be set")
    record: dict[str, Any] = {k: v for k, v in body.items() if k not in ("password", "pwhash")}
    if isinstance(password, str):
        record["pwhash"] = await server.hash_password(password)
    else:
        pwhash = body["pwhash"]
        error = acceptable_pwhash(pwhash)
        if error:
            raise HTTPError(400, error)
        record["pwhash"] = pwhash
    record["created"] = utcnow()
    if server.user_record(user) is not None:  # created while we were hashing
        raise HTTPError(409, "user already exists")
    async with server.store.write() as tx:
        if tx.get(keys.user(user)) is not None:  # created while this one waited
            raise HTTPError(409, "user already exists")
        tx.set(keys.user(user), record)
    set_serial(request, tx.serial)
    return json_response(
        request, result=public_user(server, user, record), type="userconfig", code=201
    )


@app.route("/<user>", methods=["PATCH"])
@app.route("/<user>/", methods=["PATCH"])
async def modify_user(server: DevpidServer, request: Any, user: str) -> bytes:
    record = server.user_record(user)
    if record is None:  # 404 before any credential check, as devpi
        raise not_found(f"user '{user}' does not exist")
    actor = await server.require_user(request)
    body = read_json(request)
    if not isinstance(body, dict):
        raise HTTPError(400, "user config must be a JSON object")
    if not can_modify_user(actor, user, set(body), server.settings.restrict_modify):
        what = "change password for" if set(body) == {"password"} else "modify"
        raise forbidden(f"no permission to {what} user {user}")
    new = dict(record)
    password = body.get("password")
    if password is not None and not isinstance(password, str):
        raise HTTPError(400, "password must be a string")
    for key in ("email", "title", "description", "custom_data"):
        if key in body:
            if body[key]:
                new[key] = body[key]
            else:
                new.pop(key, None)
    if password is not None:  # "" too: devpi lets root go back to its empty password
        new["pwhash"] = await server.hash_password(password)
    current = server.user_record(user)
    if current is None:
        raise not_found(f"user '{user}' does not exist")
    if new != current:
        new["modified"] = utcnow()
    async with server.store.write() as tx:
        tx.set(keys.user(user), new)
    set_serial(request, tx.serial)
    if password is not None:
        token = server.tokens.issue(user, new["pwhash"])
        return json_response(
            request,
            result={"password": token, "expiration": TOKEN_LIFETIME},
            type="userpassword",
            message="user updated, new proxy auth",
        )
    return json_response(request, message="user updated")


STAGE_KINDS = keys.STAGE_KINDS


def delete_stage_keys(tx: Any, prefix_tail: str) -> None:
    """Delete every key of every kind under ``user/`` or ``user/index/``."""
    for prefix in keys.stage_prefixes(prefix_tail):
        for key in tx.keys(prefix):
            tx.delete(key)


def _drop_from_acls(tx: Any, server: DevpidServer, user: str) -> None:
    """A deleted user's name leaves every ACL: whoever registers it later gets no rights."""
    from devpid.model.indexes import ACL_KEYS

    for key, config in server.store.items(keys.INDEXES):
        if key.startswith(keys.index_prefix(user)):
            continue
        changed = {k: [p for p in config[k] if p != user] for k in ACL_KEYS
                   if isinstance(config.get(k), list) and user in config[k]}
        if changed:
            tx.set(key, {**config, **changed})


@app.route("/<user>", methods=["DELETE"])
@app.route("/<user>/", methods=["DELETE"])
async def delete_user(server: DevpidServer, request: Any, user: str) -> bytes:
    if server.user_record(user) is None:
        raise not_found(f"user '{user}' does not exist")
    actor = await server.require_user(request)
    restrict = server.settings.restrict_modify
    if not can_delete_user(actor, user, restrict):
        raise forbidden(f"no permission to delete user {user}")
    for key, config in server.store.items(keys.index_prefix(user)):
        if not config.get("volatile", True):
            name = keys.last_part(key)
            raise forbidden(f"user '{user}' has non-volatile index: {name}")
    async with server.store.write() as tx:
        delete_stage_keys(tx, f"{user}/")
        tx.delete(keys.user(user))
        for key in tx.keys(keys.token_prefix(user)):  # its API tokens (devpid/tokens.py)
            tx.delete(key)
        _drop_from_acls(tx, server, user)
    set_serial(request, tx.serial)
    return json_response(request, message=f"user '{user}' deleted")
