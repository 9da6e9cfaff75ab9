"""One typed HTTP error, rendered one way: a JSON ``{"message": ...}`` body with the message
also in the status line's reason phrase (twine and pip show the reason, devpi-client the body).
"""

from __future__ import annotations

import json
import re
from typing import Any

JSON_TYPE = b"application/json"
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class HTTPError(Exception):
    """Raised anywhere in a request handler to answer with ``code`` and ``message``."""

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def reason_phrase(message: str) -> bytes:
    """A status-line-safe version of ``message`` (no CR/LF, ASCII, bounded)."""
    return _UNPRINTABLE.sub(" ", message)[:200].strip().encode("ascii") or b"Error"


def render_error(request: Any, error: HTTPError) -> bytes:
    request.setResponseCode(error.code, reason_phrase(error.message))
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
