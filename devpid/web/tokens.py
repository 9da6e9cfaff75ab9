"""Token routes: ``POST /USER/+tokens`` mints, ``GET`` lists, ``DELETE /USER/+tokens/ID``
revokes (devpid/tokens.py). Only the user itself and root, with a password or login token:
a scoped token can never mint or list tokens (its scope refuses these requests)."""

from __future__ import annotations

import time
from typing import Any

from devpid import tokens
from devpid.domain import keys
from devpid.domain.permissions import can_manage_tokens
from devpid.web.app import DevpidServer, app, json_response, read_json, set_serial
from devpid.web.errors import HTTPError, forbidden, not_found, unauthorized


async def _owner(server: DevpidServer, request: Any, user: str) -> dict[str, Any]:
    """The user's record once the caller may manage its tokens: 404 before any credential
    check (as devpi orders them), then a 401 challenge without credentials (tokens are
    private data, so a client that can authenticate is told to)."""
    record = server.user_record(user)
    if record is None:
        raise not_found(f"user '{user}' does not exist")
    actor = await server.identify(request)
    if actor is None:
        raise unauthorized()
    if getattr(request, "devpid_token", None) is not None:
        raise forbidden("a scoped token may not manage tokens; use the password")
    if not can_manage_tokens(actor, user):
        raise forbidden(f"no permission to manage the tokens of {user}")
    return record


@app.route("/<user>/+tokens", methods=["POST"])
async def create_token(server: DevpidServer, request: Any, user: str) -> bytes:
    record = await _owner(server, request, user)
    lifetime, indexes, actions, description = tokens.validate_request(
        read_json(request), server.index_config)
    now = time.time()
    existing = server.store.items(keys.token_prefix(user))
    expired = [key for key, value in existing
               if not isinstance(value, dict) or not isinstance(value.get("expires"), int)
               or value["expires"] <= now]  # dead weight: dropped with this commit
    if len(existing) - len(expired) >= tokens.MAX_TOKENS_PER_USER:
        raise HTTPError(409, f"{user} has {tokens.MAX_TOKENS_PER_USER} tokens; revoke some")
    token, stored = tokens.mint(str(record.get("pwhash")), lifetime, indexes, actions,
                                description)
    async with server.store.write() as tx:
        for key in expired:
            tx.delete(key)
        tx.set(tokens.key(user, stored["id"]), stored)
    set_serial(request, tx.serial)
    return json_response(request, code=201, type="token",
                         result={**tokens.public(stored), "token": token},
                         message="token created; it is shown only now")


@app.route("/<user>/+tokens", methods=["GET"])
async def list_tokens(server: DevpidServer, request: Any, user: str) -> bytes:
    await _owner(server, request, user)
    result = [tokens.public(v) for _, v in server.store.items(keys.token_prefix(user))
              if isinstance(v, dict)]
    return json_response(request, type="list:token",
                         result=sorted(result, key=lambda t: t.get("created") or 0))


@app.route("/<user>/+tokens/<token_id>", methods=["DELETE"])
async def revoke_token(server: DevpidServer, request: Any, user: str, token_id: str) -> bytes:
    await _owner(server, request, user)
    key = tokens.key(user, token_id)
    if server.store.get(key) is None:
        raise not_found(f"no token {token_id!r} of {user}")
    async with server.store.write() as tx:
        tx.delete(key)
    set_serial(request, tx.serial)
    return json_response(request, message=f"token {token_id} revoked")
