"""The simple API (PEP 503 HTML, PEP 691 JSON, with PEP 592/658/700 data) on every index.

One data function (links.collect_links) feeds two renderers. A rendered page is kept in
memory keyed by (index, project, format, URL shape) and reused while the serials of what it
shows are unchanged, so a cached page costs a dict lookup, not a database walk.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
from collections import OrderedDict
from typing import Any

from devpid import memory
from devpid.domain import keys
from devpid.links import (
    Link,
    UpstreamUnavailable,
    collect_links,
    ensure_mirrors,
    project_token,
    resolve,
    sro,
    version_key,
)
from devpid.model.names import normalize_name
from devpid.web import indexes as index_routes
from devpid.web.app import DevpidServer, app, header
from devpid.web.errors import HTTPError, not_found
from devpid.web.negotiate import (
    SIMPLE_HTML,
    SIMPLE_JSON,
    TEXT_HTML,
    choose_simple_format,
    is_installer,
)

API_VERSION = "1.1"
GZIP_ABOVE = 256 * 1024
CACHE_SIZE = 4096
RENDER_INLINE = 1000  # links up to which a project page is rendered on the reactor


class PageCache:
    """A bounded LRU of rendered pages: key -> (token, etag, body, mirrors).

    ``mirrors`` are the mirror stages the page drew from: the page stays valid only while
    their cached upstream pages are fresh (see fastpath.py).
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], tuple[Any, str, bytes, Any]] = OrderedDict()

    def get(self, key: tuple[Any, ...], token: Any) -> tuple[str, bytes] | None:
        hit = self.entries.get(key)
        if hit is None or hit[0] != token:
            return None
        self.entries.move_to_end(key)
        return hit[1], hit[2]

    def put(self, key: tuple[Any, ...], token: Any, body: bytes, mirrors: Any = ()) -> str:
        etag = '"' + hashlib.sha256(repr((key, token)).encode()).hexdigest()[:32] + '"'
        self.entries[key] = (token, etag, body, mirrors)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return etag


# -- renderers ---------------------------------------------------------------------------------
def _file_json(link: Link, prefix: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": link.filename,
        "url": prefix + link.path,
        "hashes": link.hashes,
    }
    if link.requires_python:
        entry["requires-python"] = link.requires_python
    if link.yanked:
        entry["yanked"] = link.yanked
    if link.core_metadata:
        entry["core-metadata"] = link.core_metadata
        entry["dist-info-metadata"] = link.core_metadata
    if link.size is not None:
        entry["size"] = link.size
    if link.upload_time:
        entry["upload-time"] = link.upload_time
    return entry


def _versions(links: list[Link]) -> list[str]:
    found = {link.version for link in links if link.version}
    return sorted(found, key=version_key)


def render_project_json(name: str, links: list[Link], prefix: str, serial: int) -> bytes:
    data = {
        "meta": {"api-version": API_VERSION, "_last-serial": serial},
        "name": name,
        "versions": _versions(links),
        "files": [],
    }
    head = json.dumps(data, separators=(",", ":"))
    assert head.endswith('"files":[]}')
    # One dumps per file, not one for all: a thread rendering 50,000 files then releases
    # the GIL between entries instead of holding it (and stalling the reactor) for 0.3 s.
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    files = ",".join(dumps(_file_json(link, prefix)) for link in links)
    return (head[:-2] + files + "]}").encode()


def render_project_html(
    stage: str, name: str, links: list[Link], prefix: str, blocked: list[str]
) -> bytes:
    title = html.escape(f"{stage}: links for {name}")
    out = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head>"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">'
        f"<title>{title}</title></head><body><h1>{title}</h1>\n"
    ]
    for mirror in blocked:
        out.append(
            "<p><strong>INFO:</strong> Because this project isn't in the "
            f"<code>mirror_whitelist</code>, no releases from <strong>{html.escape(mirror)}"
            "</strong> are included.</p>\n"
        )
    for link in links:
        attrs = [f'href="{html.escape(prefix + link.path)}#sha256={link.hashes.get("sha256", "")}"']
        if "sha256" not in link.hashes:
            attrs = [f'href="{html.escape(prefix + link.path)}"']
        if link.requires_python:
            attrs.append(f'data-requires-python="{html.escape(link.requires_python)}"')
        if link.yanked:
            reason = link.yanked if isinstance(link.yanked, str) else ""
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if link.core_metadata:
            value = (
                f"sha256={link.core_metadata['sha256']}"
                if isinstance(link.core_metadata, dict) and "sha256" in link.core_metadata
                else "true"
            )
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        out.append(
            f"{html.escape(link.stage)} <a {' '.join(attrs)}>{html.escape(link.filename)}</a><br>\n"
        )
    out.append("</body></html>\n")
    return "".join(out).encode()


def render_list_json(names: str, serial: int) -> bytes:
    """``names``: normalised names, one per line (no escaping needed: [a-z0-9-] only)."""
    head = json.dumps({"api-version": API_VERSION, "_last-serial": serial},
                      separators=(",", ":"))
    if not names:
        return f'{{"meta":{head},"projects":[]}}'.encode()
    body = names.replace("\n", '"},{"name":"')
    return f'{{"meta":{head},"projects":[{{"name":"{body}"}}]}}'.encode()


def render_list_html(stage: str, names: str) -> bytes:
    title = html.escape(f"{stage}: simple list (including inherited indices)")
    body = _ANCHOR_LINE.sub(r'<a href="\1/">\1</a><br>', names) + "\n" if names else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta name="pypi:repository-version" '
        f'content="{API_VERSION}"><title>{title}</title></head><body><h1>{title}</h1>\n'
        f"{body}</body></html>\n"
    ).encode()


_ANCHOR_LINE = re.compile(r"(?m)^(.+)$")


# -- views -------------------------------------------------------------------------------------
def _content_type(fmt: str) -> bytes:
    if fmt == TEXT_HTML:
        return b"text/html; charset=utf-8"
    return fmt.encode()


def _format(request: Any) -> str:
    fmt_arg = request.args.get(b"format")
    # A literal "+" in the query decodes to a space ("v1+json" typed into a URL); media types
    # have no spaces, so put it back.
    value = fmt_arg[0].decode("latin-1").replace(" ", "+") if fmt_arg else None
    return choose_simple_format(header(request, b"accept"), value)


def _send(request: Any, fmt: str, etag: str, body: bytes) -> bytes:
    if body[:2] == b"\x1f\x8b":  # stored gzip-compressed (only big list pages are)
        if "gzip" in (header(request, b"accept-encoding") or ""):
            request.setHeader(b"Content-Encoding", b"gzip")
        else:
            body = gzip.decompress(body)
    request.setHeader(b"Content-Type", _content_type(fmt))
    request.setHeader(b"ETag", etag.encode())
    request.setHeader(b"Vary", b"Accept, Accept-Encoding, User-Agent")
    request.setHeader(b"Cache-Control", b"max-age=0, must-revalidate")
    inm = header(request, b"if-none-match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        request.setResponseCode(304)
        return b""
    return body


def _require_stage(server: DevpidServer, stage: str) -> dict[str, Any]:
    config = server.index_config(stage)
    if config is None:
        raise not_found(f"The stage {stage} could not be found.")
    return config


async def serve_project_page(
    server: DevpidServer, request: Any, user: str, index: str, project: str, prefix: str
) -> bytes:
    stage = f"{user}/{index}"
    _require_stage(server, stage)
    try:
        project.encode("ascii")
    except UnicodeEncodeError:
        raise HTTPError(400, "unicode project names not allowed") from None
    fmt = _format(request)
    resolution = resolve(server, stage, project)
    await ensure_mirrors(server, stage, project)
    token = project_token(server, stage, project)
    cache = server.page_cache
    key = (stage, project, fmt, prefix)
    hit = cache.get(key, token)
    if hit is not None:
        return _send(request, fmt, hit[0], hit[1])
    try:
        links, known = await collect_links(server, stage, project)
    except UpstreamUnavailable as e:
        raise HTTPError(e.status, e.message) from None
    if not known and not links:
        raise not_found(f"The project {project} does not exist.")
    serial = server.store.serial

    def render() -> bytes:
        if fmt == SIMPLE_JSON:
            return render_project_json(project, links, prefix, serial)
        return render_project_html(stage, project, links, prefix, resolution.blocked_mirrors)

    # A page of thousands of files takes long enough to block other requests: thread.
    if len(links) > RENDER_INLINE:
        body = await server.in_thread(render)
        del links
        await server.in_thread(memory.trim)
    else:
        body = render()
    # Only cache if nothing changed while we awaited (the token still describes the body).
    if project_token(server, stage, project) == token:
        mirrors = tuple((n, c) for n, c in resolution.stages if c.get("type") == "mirror")
        etag = cache.put(key, token, body, mirrors)
    else:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _send(request, fmt, etag, body)


def _redirect(request: Any, location: str) -> bytes:
    request.setResponseCode(301)
    request.setHeader(b"Location", location.encode())
    request.setHeader(b"Vary", b"Accept, User-Agent")
    return b""


@app.route("/<user>/<index>/+simple/<project>/", methods=["GET", "HEAD"])
async def simple_project(
    server: DevpidServer, request: Any, user: str, index: str, project: str
) -> bytes:
    normal = normalize_name(project)
    if normal != project:
        return _redirect(request, f"{server.outside_url(request)}/{user}/{index}/+simple/{normal}/")
    return await serve_project_page(server, request, user, index, project, "../../../../")


@app.route("/<user>/<index>/+simple/<project>", methods=["GET", "HEAD"])
async def simple_project_noslash(
    server: DevpidServer, request: Any, user: str, index: str, project: str
) -> bytes:
    normal = normalize_name(project)
    ua = header(request, b"user-agent")
    if normal != project or not (is_installer(ua) or _format(request) == SIMPLE_JSON):
        return _redirect(request, f"{server.outside_url(request)}/{user}/{index}/+simple/{normal}/")
    return await serve_project_page(server, request, user, index, project, "../../../")


async def project_names_parts(server: DevpidServer, stage: str) -> list[str | list[str]]:
    """Per stage of the resolution order: its names (private: a list; mirror: one text with a
    name per line, which can hold a PyPI-sized list without an object per name)."""
    parts: list[str | list[str]] = []
    for name, config in sro(server, stage):
        if config.get("type") == "mirror":
            parts.append(await server.mirror.project_names_text(name, config))
        else:
            parts.append(index_routes.stage_projects(server, name, config))
    return parts


def join_names(parts: list[str | list[str]]) -> str:
    """One name per line, each once, private stages first. Blocking for big lists (thread)."""
    seen: set[str] = set()
    out: list[str] = []
    for part in parts:
        if isinstance(part, list):
            new = [n for n in part if n not in seen]
            seen.update(new)
            out.append("\n".join(new))
        elif part:
            if seen:  # drop mirror names a private stage listed already
                part = "\n".join(n for n in part.split("\n") if n not in seen)
            out.append(part)
    return "\n".join(p for p in out if p)


async def serve_project_list(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    stage = f"{user}/{index}"
    _require_stage(server, stage)
    fmt = _format(request)
    parts: list[Any] = [server.page_tokens.config_serial]
    for name, config in sro(server, stage):
        if config.get("type") == "mirror":
            parts.append(await server.mirror.list_token(name, config))
        else:
            parts.append(server.store.max_serial(keys.project_prefix(name)))
    token = tuple(parts)
    cache = server.page_cache
    key = (stage, "+list", fmt)
    hit = cache.get(key, token)
    if hit is not None:
        return _send(request, fmt, hit[0], hit[1])
    parts = await project_names_parts(server, stage)
    serial = server.store.serial

    def render() -> bytes:
        text = join_names(parts)
        body = render_list_json(text, serial) if fmt == SIMPLE_JSON else render_list_html(
            stage, text)
        # Big lists (a PyPI mirror lists ~780k names) are kept compressed only.
        return gzip.compress(body, 1, mtime=0) if len(body) > GZIP_ABOVE else body

    body = await server.in_thread(render)
    etag = cache.put(key, token, body)
    return _send(request, fmt, etag, body)


@app.route("/<user>/<index>/+simple/", methods=["GET", "HEAD"])
async def simple_list(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    return await serve_project_list(server, request, user, index)


@app.route("/<user>/<index>/+simple", methods=["GET", "HEAD"])
async def simple_list_noslash(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    if is_installer(header(request, b"user-agent")) or _format(request) == SIMPLE_JSON:
        return await serve_project_list(server, request, user, index)
    return _redirect(request, f"{server.outside_url(request)}/{user}/{index}/+simple/")


async def index_get_hook(
    server: DevpidServer, request: Any, user: str, index: str
) -> bytes | None:
    """``GET /u/i`` from an installer or with PEP 691 Accept acts as the project list."""
    if is_installer(header(request, b"user-agent")):
        return await serve_project_list(server, request, user, index)
    accept = header(request, b"accept") or ""
    if SIMPLE_JSON in accept and "application/json" not in accept:
        return await serve_project_list(server, request, user, index)
    return None


__all__ = ["SIMPLE_HTML", "PageCache", "index_get_hook", "serve_project_list",
           "serve_project_page"]


@app.route("/<user>/<index>/+simple/<project>/refresh", methods=["POST"])
async def refresh_project(
    server: DevpidServer, request: Any, user: str, index: str, project: str
) -> bytes:
    """``devpi refresh``: re-ask every mirror in the resolution order now."""
    stage = f"{user}/{index}"
    _require_stage(server, stage)
    project = normalize_name(project)
    mirror = server.mirror
    for name, config in resolve(server, stage, project).stages:
        if config.get("type") == "mirror":
            mirror.forget(name, project)
            await mirror.ensure(name, config, project)
    request.setResponseCode(302)
    request.setHeader(b"Location",
                      f"{server.outside_url(request)}/{stage}/+simple/{project}/".encode())
    return b""
