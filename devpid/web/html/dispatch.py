"""Content negotiation for the browsable URLs, before routing.

``/``, ``/USER``, ``/USER/INDEX``, ``/USER/INDEX/PROJECT`` and ``/USER/INDEX/PROJECT/VERSION``
answer devpi's JSON to API clients and HTML pages to browsers. The root resource calls
``browser_route`` after its fast paths; a browser's request is re-pointed at the web view's
own routes (``/+html/...``, see pages.py), everything else is left to the JSON routes.
Installer URLs (``+simple``, ``+f``) and installer user agents return at the first checks.
"""

from __future__ import annotations

from typing import Any

from devpid.web.errors import HTTPError
from devpid.web.negotiate import SIMPLE_HTML, SIMPLE_JSON, TEXT_HTML, choose_view, is_installer

HTML_PREFIX = b"+html"
_ALSO_SERVED = (SIMPLE_JSON, SIMPLE_HTML)  # /USER/INDEX answers the PEP 691 list too


def _header(request: Any, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return None if not value else value[0].decode("latin-1")


def browser_route(server: Any, request: Any, segments: list[bytes]) -> HTTPError | None:
    """Point a browser's request at the HTML view (by rewriting ``postpath``); 406 when the
    Accept header allows neither HTML nor JSON; None (and no change) otherwise."""
    if request.method not in (b"GET", b"HEAD") or len(segments) > 5:
        return None
    parts = segments[:-1] if segments and segments[-1] == b"" else segments
    if len(parts) > 4:
        return None
    for part in parts:
        if not part or part[:1] == b"+":  # +simple, +f, +api, +status, +doc, ...
            return None
    if is_installer(_header(request, b"user-agent")):
        return None
    choice = choose_view(_header(request, b"accept"), _ALSO_SERVED)
    request.setHeader(b"Vary", b"Accept, User-Agent")  # JSON or HTML: caches must tell
    if choice is None:
        return HTTPError(406, "not acceptable: this URL answers text/html or application/json")
    if choice == TEXT_HTML:
        request.devpid_html = True
        request.postpath = [HTML_PREFIX, *segments] if segments else [HTML_PREFIX, b""]
    return None
