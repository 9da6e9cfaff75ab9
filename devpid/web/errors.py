"""One typed HTTP error, rendered one way: a JSON ``{"message": ...}`` body.

The status line carries the standard reason phrase (``401 Unauthorized``): devpi-client prints
``<status> <reason>: <message>``, so a message there too would be shown twice. Upload errors
are the exception, as in devpi: twine and setup.py show only the status line, so
``submit_error`` puts the message there (except for 401, which stays ``Unauthorized``).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

JSON_TYPE = b"application/json"
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class HTTPError(Exception):
    """Raised anywhere in a request handler to answer with ``code`` and ``message``."""

    def __init__(
        self, code: int, message: str, *, headers: dict[str, str] | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.reason = reason  # None: the standard phrase for ``code``


def status_reason(error: HTTPError) -> bytes:
    """The reason phrase for ``error``'s status line."""
    if error.reason is not None:
        return reason_phrase(error.reason)
    try:
        return HTTPStatus(error.code).phrase.encode("ascii")
    except ValueError:
        return b"Error"


def submit_error(error: HTTPError) -> HTTPError:
    """``error`` as the legacy upload protocol reports it: the message in the status line."""
    if error.reason is None and error.code != 401:
        error.reason = error.message
    return error


def reason_phrase(message: str) -> bytes:
    """A status-line-safe version of ``message`` (no CR/LF, ASCII, bounded)."""
    return _UNPRINTABLE.sub(" ", message)[:200].strip().encode("ascii") or b"Error"


def render_error(request: Any, error: HTTPError) -> bytes:
    request.setResponseCode(error.code, status_reason(error))
    request.setHeader(b"Content-Type", JSON_TYPE)
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return json.dumps({"message": error.message}, indent=2).encode() + b"\n"


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def forbidden(message: str) -> HTTPError:
    return HTTPError(403, message)


def not_found(message: str) -> HTTPError:
    return HTTPError(404, message)


def unauthorized(message: str = "authentication required") -> HTTPError:
    return HTTPError(401, message, headers={"WWW-Authenticate": 'Basic realm="pypi"'})
