"""Creating a server directory: the store at serial 0 with root and (optionally) root/pypi."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from devpid import auth
from devpid.store import is_initialised, keys, open_store


def default_upstream_url() -> str:
    """PyPI's simple API, as published by a maintained client library (not our literal)."""
    from pypi_simple import PYPI_SIMPLE_ENDPOINT

    return str(PYPI_SIMPLE_ENDPOINT)


def root_pypi_config(mirror_url: str | None = None, cache_expiry: int = 1800) -> dict[str, object]:
    return {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": mirror_url or default_upstream_url(),
        "mirror_cache_expiry": cache_expiry,
        "mirror_no_project_list": False,
        "mirror_ignore_serial_header": False,
        "mirror_use_external_urls": False,
        "mirror_provides_core_metadata": True,
    }


class AlreadyInitialised(Exception):
    pass


def initialise(
    serverdir: Path,
    *,
    root_password: str | None = None,
    root_pypi: bool = True,
    mirror_url: str | None = None,
    bcrypt_rounds: int = auth.DEFAULT_BCRYPT_ROUNDS,
) -> str:
    """Create the store, the root user and root/pypi; returns root's password.

    Without a password a strong one is generated (devpi-server's empty default password is
    a foot-gun); an empty password is only set when explicitly asked for.
    """
    if is_initialised(serverdir):
        raise AlreadyInitialised(f"{serverdir} is already initialised")
    password = secrets.token_urlsafe(18) if root_password is None else root_password
    store, _blobs = open_store(serverdir)
    try:
        with store.transaction() as tx:
            tx.set(
                keys.user("root"),
                {
                    "pwhash": auth.hash_password(password, bcrypt_rounds),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            if root_pypi:
                tx.set(keys.index("root", "pypi"), root_pypi_config(mirror_url))
    finally:
        store.close()
    return password
