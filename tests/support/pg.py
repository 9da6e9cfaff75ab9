"""The test PostgreSQL server (``.ci/pg-cluster`` starts one and CI exports its URL).

``DEVPID_TEST_PG_URL`` names a database of a server the tests may create databases on;
each store or daemon under test gets a fresh database, dropped when the session ends.
"""

from __future__ import annotations

import atexit
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_URL = os.environ.get("DEVPID_TEST_PG_URL") or None
SKIP_REASON = ("no PostgreSQL for the tests: start one with '.ci/pg-cluster start DIR' and "
               "export DEVPID_TEST_PG_URL=<the URL it prints> (CI always does)")
requires_pg = pytest.mark.skipif(PG_URL is None, reason=SKIP_REASON)

_created: list[str] = []


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def fresh_database() -> str:
    """The URL of a new, empty database on the test server."""
    import psycopg

    if PG_URL is None:
        raise RuntimeError(SKIP_REASON)
    name = "devpid_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # generated name
    _created.append(name)
    return _with_database(PG_URL, name)


@atexit.register
def _drop_all() -> None:
    if not _created or PG_URL is None:
        return
    import psycopg

    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for name in _created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    except psycopg.Error:
        pass  # a throw-away test server: leftovers do no harm
