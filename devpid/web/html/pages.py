"""The web view's pages: home, user, index, project, version (server-rendered HTML).

Reached only through dispatch.py (browsers asking for ``/``, ``/USER``, ...), never by
installers. Data comes from the same functions the JSON and simple views use (links.py,
``status_result``), so the pages show what clients get. Every index is checked with
access.may_read before anything of it is shown.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from devpid.domain import keys, paths
from devpid.links import (
    Link,
    resolve,
    sro,
    version_key,
)
from devpid.model.names import normalize_name
from devpid.readacl import may_see_status
from devpid.redact import may_see_secrets
from devpid.web.app import DevpidServer, app
from devpid.web.errors import HTTPError, not_found
from devpid.web.html import reading
from devpid.web.html.access import (
    may_read,
    readable_indexes,
    viewer,
    visible_config,
    visible_status,
)
from devpid.web.html.markup import (
    Safe,
    badge,
    e,
    external_link,
    join,
    kv,
    link,
    page,
    send,
    size,
    when,
)
from devpid.web.projects import project_links

MAX_LISTED = 500  # projects listed on an index page (the rest: use search)
FILES_OF_VERSIONS = 20  # a project page lists the files of this many newest versions

View = Callable[..., Awaitable[bytes]]


def html_view(f: View) -> View:
    """Only for requests dispatch.py pointed here; errors become HTML pages for people."""

    @functools.wraps(f)
    async def wrapper(server: DevpidServer, request: Any, *args: Any, **kw: Any) -> bytes:
        if not getattr(request, "devpid_html", False):
            raise not_found("Not Found")
        try:
            return await f(server, request, *args, **kw)
        except HTTPError as error:
            return error_page(server, request, error)

    return wrapper


def error_page(server: DevpidServer, request: Any, error: HTTPError) -> bytes:
    base = server.outside_url(request)
    for name, value in error.headers.items():
        if name.lower() != "content-type":
            request.setHeader(name.encode(), value.encode())
    body = (f"<h1>{e(error.code)}</h1><p>{e(error.message)}</p>"
            f'<p>{link(base + "/", "Back to the start page")}</p>')
    return send(request, page(base, f"{error.code} {error.message}", body), error.code)


def _stage_or_404(server: DevpidServer, who: str | None, stage: str) -> dict[str, Any]:
    """The index config as ``who`` may see it, or 404 (also when ``who`` may not read it)."""
    config = server.index_config(stage)
    if config is None or not may_read(server, who, stage, config):
        raise not_found(f"The stage {stage} could not be found.")
    return visible_config(who, stage, config)


def _index_kind(config: dict[str, Any]) -> Safe:
    if config.get("type") == "mirror":
        return badge("mirror")
    return badge("volatile" if config.get("volatile", True) else "non-volatile",
                 "" if config.get("volatile", True) else "ok")


# -- home ---------------------------------------------------------------------------------------
def _installer_stage(indexes: list[tuple[str, dict[str, Any]]]) -> str | None:
    names = [stage for stage, _ in indexes]
    if "root/pypi" in names:
        return "root/pypi"
    private = [stage for stage, config in indexes if config.get("type") != "mirror"]
    candidates = private or names
    return candidates[0] if candidates else None


def installer_snippets(base: str, stage: str) -> Safe:
    simple = f"{base}/{stage}/+simple/"
    host = base.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    trusted = f"\ntrusted-host = {host}" if base.startswith("http://") else ""
    pip_conf = f"[global]\nindex-url = {simple}{trusted}\n"
    uv_toml = f'[[index]]\nurl = "{simple}"\ndefault = true\n'
    return join([
        f"<p>Installers use the simple index of <code>{e(stage)}</code>:</p>",
        f"<pre>pip install --index-url {e(simple)} PROJECT\n"
        f"uv pip install --index-url {e(simple)} PROJECT</pre>",
        '<div class="grid"><div><p class="small muted">pip.conf (or pip.ini)</p>'
        f"<pre>{e(pip_conf)}</pre></div>",
        '<div><p class="small muted">uv.toml (or [tool.uv] in pyproject.toml)</p>'
        f"<pre>{e(uv_toml)}</pre></div></div>",
    ])


def status_summary(server: DevpidServer, base: str, indexes: list[tuple[str, dict[str, Any]]],
                   who: str | None) -> Safe:
    """Serial, mirror upstream health and replica lag, from what ``/+status`` reports."""
    from devpid.web.users import status_result

    status = visible_status(who, status_result(server))
    rows: list[tuple[str, Any]] = [
        ("serial", status.get("serial")),
        ("last change", when(status.get("last-commit-timestamp"))),
        ("role", "replica" if status.get("role") == "REPLICA" else "primary"),
        ("running since", when(status.get("started"))),
    ]
    parts: list[str] = [kv(rows)]
    if status.get("offline-mode"):
        parts.append(f"<p>{badge('offline mode', 'warn')} upstreams are never asked; only "
                     "cached files are served.</p>")
    mirrors = status.get("mirrors") or {}
    mirror_stages = [stage for stage, config in indexes if config.get("type") == "mirror"]
    if mirror_stages:
        items = []
        for stage in mirror_stages:
            info = mirrors.get(stage)
            info = info if isinstance(info, dict) else {}
            if info.get("in_backoff"):
                state = badge("backing off", "bad")
            elif info.get("last_error") and not info.get("last_success"):
                state = badge("failing", "bad")
            elif info.get("last_success"):
                state = badge("reachable", "ok")
            else:
                state = badge("not asked yet")
            listing = info.get("project_list") or {}
            detail = f"{listing.get('names', 0)} names listed" if listing.get("names") else ""
            error = info.get("last_error") or listing.get("error")
            items.append(
                f"<li>{link(f'{base}/{stage}', stage)} {state} "
                f'<span class="small muted">{e(detail)}</span>'
                + (f' <span class="small yanked">{e(error)}</span>' if error else "")
                + "</li>"
            )
        parts.append("<p><strong>Mirrors</strong></p><ul>" + "".join(items) + "</ul>")
    replica = status.get("replica")
    if isinstance(replica, dict):
        lag = replica.get("lag")
        state = badge("in sync", "ok") if replica.get("in-sync") else badge(
            f"{lag} behind" if lag is not None else "primary not reached", "warn")
        parts.append(
            f"<p><strong>Replica of</strong> {e(replica.get('primary-url'))} {state}"
            + (f' <span class="small yanked">{e(replica.get("last-error"))}</span>'
               if replica.get("last-error") else "") + "</p>")
    return join(parts)


def index_table(base: str, indexes: list[tuple[str, dict[str, Any]]]) -> Safe:
    rows = []
    for stage, config in indexes:
        bases = ", ".join(config.get("bases") or [])
        rows.append(
            f"<tr><td>{link(f'{base}/{stage}', stage)}</td><td>{_index_kind(config)}</td>"
            f"<td>{e(config.get('title') or '')}</td><td>{e(bases)}</td></tr>")
    if not rows:
        return Safe('<p class="muted">No indexes yet.</p>')
    return Safe("<table><thead><tr><th>index</th><th>kind</th><th>title</th><th>bases</th>"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


@app.route("/+html/", methods=["GET", "HEAD"])
@html_view
async def home(server: DevpidServer, request: Any) -> bytes:
    base = server.outside_url(request)
    who = await viewer(server, request)
    indexes = readable_indexes(server, who)
    stage = _installer_stage(indexes)
    body = [
        "<h1>devpid package index</h1>",
        '<p class="muted">A private Python package index and caching mirror. Upload with '
        "twine or devpi, install with pip or uv.</p>",
    ]
    if stage:
        body.append(f'<div class="card">{installer_snippets(base, stage)}</div>')
    if may_see_status(server, who):  # upstreams and replicas are internals (--status-acl)
        body.append(f'<h2>Status</h2><div class="card">'
                    f"{status_summary(server, base, indexes, who)}</div>")
    body.append(f"<h2>Indexes</h2>{index_table(base, indexes)}")
    return send(request, page(base, "devpid", join(body), serial=server.store.serial))


# -- user -----------------------------------------------------------------------------------
@app.route("/+html/<user>", methods=["GET", "HEAD"])
@app.route("/+html/<user>/", methods=["GET", "HEAD"])
@html_view
async def user_page(server: DevpidServer, request: Any, user: str) -> bytes:
    base = server.outside_url(request)
    record = server.user_record(user)
    if record is None:
        raise not_found(f"user '{user}' does not exist")
    who = await viewer(server, request)
    indexes = readable_indexes(server, who, keys.index_prefix(user))
    shown = server.settings.public_emails or may_see_secrets(who, user)  # self, root
    email = record.get("email") if shown else None
    details = kv([("title", record.get("title")), ("email", email),
                  ("description", record.get("description")),
                  ("created", record.get("created"))])
    body = join([f"<h1>{e(user)}</h1>", f'<div class="card">{details}</div>',
                 "<h2>Indexes</h2>", index_table(base, indexes)])
    return send(request, page(base, user, body, crumbs=[(base + "/", "home")],
                              serial=server.store.serial))


# -- index ----------------------------------------------------------------------------------
def _acl(values: Any) -> str:
    if not values:
        return "nobody"
    return ", ".join(":ANONYMOUS:" if v == ":ANONYMOUS:" else str(v) for v in values)


@app.route("/+html/<user>/<index>", methods=["GET", "HEAD"])
@app.route("/+html/<user>/<index>/", methods=["GET", "HEAD"])
@html_view
async def index_page(server: DevpidServer, request: Any, user: str, index: str) -> bytes:
    base = server.outside_url(request)
    stage = f"{user}/{index}"
    who = await viewer(server, request)
    config = _stage_or_404(server, who, stage)
    mirror = config.get("type") == "mirror"
    bases = [b for b in config.get("bases") or [] if server.index_config(b) is not None]
    facts: list[tuple[str, Any]] = [
        ("type", config.get("type", "stage")),
        ("title", config.get("title")),
        ("description", config.get("description")),
        ("volatile", "yes" if config.get("volatile", True) else "no (files cannot be overwritten)"),
    ]
    if mirror:
        facts += [("upstream", config.get("mirror_url")),
                  ("cache expiry", f"{config.get('mirror_cache_expiry', '')} s")]
    else:
        facts += [("upload allowed for", _acl(config.get("acl_upload"))),
                  ("tox results from", _acl(config.get("acl_toxresult_upload"))),
                  ("mirror whitelist", ", ".join(config.get("mirror_whitelist") or []) or "none"),
                  ("whitelist inheritance", config.get("mirror_whitelist_inheritance"))]
    body = [f"<h1>{e(stage)} {_index_kind(config)}</h1>", f'<div class="card">{kv(facts)}'
            + (("<p>bases: " + ", ".join(link(f"{base}/{b}", b) for b in bases) + "</p>")
               if bases else "") + "</div>",
            f'<div class="card">{installer_snippets(base, stage)}</div>']
    db = Path(server.store.path)
    if mirror:
        count, cached = await server.in_thread(reading.cached_names, db, stage, MAX_LISTED)
        body.append(f"<h2>Cached projects ({count})</h2>"
                    '<p class="muted small">Any upstream project can be installed; search '
                    "finds names in the upstream list.</p>")
        body.append("<p>" + " · ".join(link(f"{base}/{stage}/{n}", n) for n in cached)
                    + "</p>")
    else:
        count, listing = await server.in_thread(reading.stage_listing, db, stage, MAX_LISTED)
        rows = "".join(
            f"<tr><td>{link(f'{base}/{stage}/{name}', name)}</td>"
            f"<td>{e(latest)}</td><td>{e(summary)}</td></tr>" for name, latest, summary in listing)
        body.append(f"<h2>Projects ({count})</h2>")
        body.append("<table><thead><tr><th>project</th><th>latest</th><th>summary</th></tr>"
                    f"</thead><tbody>{rows}</tbody></table>" if listing else
                    '<p class="muted">No projects uploaded here yet.</p>')
    if count > MAX_LISTED:
        body.append(f'<p class="muted">{count - MAX_LISTED} more: use search.</p>')
    crumbs = [(base + "/", "home"), (f"{base}/{user}", user)]
    return send(request, page(base, stage, join(body), crumbs=crumbs, serial=server.store.serial))


# -- projects and versions ------------------------------------------------------------------
def _redirect(request: Any, location: str) -> bytes:
    request.setResponseCode(302)
    request.setHeader(b"Location", location.encode())
    return b""


async def _project_links(server: DevpidServer, stage: str, project: str) -> list[Link]:
    """The links a simple page would list (mirrors asked first, as serve_project_page does)."""
    links, known = await project_links(server, stage, project)
    if not links and not known:
        raise not_found(f"The project {project} does not exist on {stage}.")
    return links


def _release_meta(server: DevpidServer, stage: str, project: str,
                  version: str) -> tuple[str, dict[str, Any], int] | None:
    """(stage, metadata, serial) of the first stage in resolution order with this release."""
    for name, _config in resolve(server, stage, project).stages:
        meta, serial = server.store.get_with_serial(keys.release(name, project, version))
        if isinstance(meta, dict):
            return name, meta, serial
    return None


def _docs_stage(server: DevpidServer, stage: str, project: str, version: str) -> str | None:
    """The first stage in resolution order holding docs for this release."""
    for name, _config in sro(server, stage):
        if server.store.get(keys.doc(name, project, version)) is not None:
            return name
    return None


def _docs_link(server: DevpidServer, base: str, stage: str, project: str,
               version: str) -> Safe | None:
    found = _docs_stage(server, stage, project, version)
    if found is None:
        return None
    return link(f"{base}/{paths.docs_page_url(found, project, version)}", "documentation")


def _tox_reports(server: DevpidServer, stage: str, project: str) -> dict[str, list[dict[str, Any]]]:
    """release file name -> its stored tox reports, over the resolution order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, config in sro(server, stage):
        if config.get("type") == "mirror":
            continue
        for _key, tox in server.store.items(keys.toxresults_of_project(name, project)):
            if isinstance(tox, dict) and isinstance(tox.get("for"), str):
                out.setdefault(tox["for"], []).append(tox)
    return out


def _yanked(link_: Link) -> Safe:
    if not link_.yanked:
        return Safe("")
    reason = link_.yanked if isinstance(link_.yanked, str) else ""
    return join([badge("yanked", "warn"), f'<span class="yanked">{e(reason)}</span>'])


def files_table(base: str, links: list[Link], tox: dict[str, list[dict[str, Any]]]) -> Safe:
    rows = []
    for item in links:
        sha = item.hashes.get("sha256") or next(iter(item.hashes.values()), "")
        algo = "sha256" if "sha256" in item.hashes else next(iter(item.hashes), "")
        reports = " ".join(
            link(f"{base}/{report['path']}", f"tox result {i + 1}", style="white-space:nowrap")
            for i, report in enumerate(tox.get(item.filename, [])) if report.get("path"))
        rows.append(
            f"<tr><td>{link(f'{base}/{item.path}', item.filename)}"
            f'<div class="small muted">{e(item.stage)}</div></td>'
            f"<td>{e(item.version or '')}</td>"
            f'<td class="num">{e(size(item.size))}</td>'
            f"<td>{e(when(item.upload_time))}</td>"
            f"<td>{e(item.requires_python or '')}</td>"
            f'<td class="hash small"><code title="{e(algo)}">{e(sha)}</code></td>'
            f"<td>{_yanked(item)}</td><td>{reports}</td></tr>")
    if not rows:
        return Safe('<p class="muted">No files.</p>')
    return Safe("<table><thead><tr><th>file</th><th>version</th><th>size</th><th>uploaded</th>"
                "<th>requires-python</th><th>hash</th><th>yanked</th><th>tests</th></tr>"
                f"</thead><tbody>{''.join(rows)}</tbody></table>")


@app.route("/+html/<user>/<index>/<project>", methods=["GET", "HEAD"])
@app.route("/+html/<user>/<index>/<project>/", methods=["GET", "HEAD"])
@html_view
async def project_page(server: DevpidServer, request: Any, user: str, index: str,
                       project: str) -> bytes:
    base = server.outside_url(request)
    stage = f"{user}/{index}"
    normal = normalize_name(project)
    if normal != project:
        return _redirect(request, f"{base}/{stage}/{normal}")
    who = await viewer(server, request)
    _stage_or_404(server, who, stage)
    links = await _project_links(server, stage, project)
    versions = sorted({item.version for item in links if item.version}, key=version_key,
                      reverse=True)
    private_versions = [
        keys.last_part(key) for name, config in resolve(server, stage, project).stages
        if config.get("type") != "mirror"
        for key in server.store.keys(keys.release_prefix(name, project))]
    for version in private_versions:  # registered releases without files yet
        if version not in versions:
            versions.append(version)
    versions.sort(key=version_key, reverse=True)
    latest = _release_meta(server, stage, project, versions[0]) if versions else None
    meta = latest[1] if latest else {}
    title = meta.get("name") or project
    summary = meta.get("summary") or ""
    by_version: dict[str, list[Link]] = {}
    for item in links:
        by_version.setdefault(item.version or "", []).append(item)
    rows = []
    for version in versions:
        files = by_version.get(version, [])
        yanked = bool(files) and all(f.yanked for f in files)
        docs = _docs_link(server, base, stage, project, version)
        rows.append(
            f"<tr><td>{link(f'{base}/{stage}/{project}/{version}', version)}</td>"
            f"<td>{len(files)}</td>"
            f"<td>{badge('yanked', 'warn') if yanked else ''}</td><td>{docs or ''}</td></tr>")
    shown = set(versions[:FILES_OF_VERSIONS])
    newest = [item for item in links if item.version in shown]
    older = len(versions) > FILES_OF_VERSIONS
    body = [
        f"<h1>{e(title)}</h1>",
        f'<p class="muted">{e(summary)}</p>' if summary else "",
        f"<pre>pip install --index-url {e(base)}/{e(stage)}/+simple/ {e(project)}</pre>",
        "<h2>Versions</h2><table><thead><tr><th>version</th><th>files</th><th>state</th>"
        "<th>docs</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>",
        f"<h2>Files{' of the newest ' + str(FILES_OF_VERSIONS) + ' versions' if older else ''}"
        "</h2>",
        files_table(base, sorted(newest, key=lambda item: (version_key(item.version),
                                                             item.filename), reverse=True),
                    _tox_reports(server, stage, project)),
        '<p class="muted small">Files of older versions are on their version pages.</p>'
        if older else "",
    ]
    crumbs = [(base + "/", "home"), (f"{base}/{user}", user), (f"{base}/{stage}", stage)]
    return send(request, page(base, f"{title} on {stage}", join(body), crumbs=crumbs,
                              serial=server.store.serial))


def _project_urls(meta: dict[str, Any]) -> Safe:
    items = []
    home = meta.get("home_page")
    if home:
        items.append(f"<li>{external_link(home, 'Homepage')}</li>")
    for entry in meta.get("project_urls") or []:
        if isinstance(entry, str):
            label, _, url = entry.partition(",")
            items.append(f"<li>{external_link(url.strip(), label.strip())}</li>")
    return Safe(f"<ul>{''.join(items)}</ul>" if items else "")


@app.route("/+html/<user>/<index>/<project>/<version>", methods=["GET", "HEAD"])
@app.route("/+html/<user>/<index>/<project>/<version>/", methods=["GET", "HEAD"])
@html_view
async def version_page(server: DevpidServer, request: Any, user: str, index: str,
                       project: str, version: str) -> bytes:
    base = server.outside_url(request)
    stage = f"{user}/{index}"
    normal = normalize_name(project)
    if normal != project:
        return _redirect(request, f"{base}/{stage}/{normal}/{version}")
    who = await viewer(server, request)
    _stage_or_404(server, who, stage)
    links = [item for item in await _project_links(server, stage, project)
             if item.version == version]
    found = _release_meta(server, stage, project, version)
    if not links and found is None:
        raise not_found(f"The version {version} of project {project} does not exist.")
    meta_stage, meta, serial = found if found else (stage, {}, -1)
    description = await server.description_cache.get(
        server, meta_stage, project, version, meta, serial)
    requires = meta.get("requires_dist") or []
    facts: list[tuple[str, Any]] = [
        ("version", version),
        ("requires-python", meta.get("requires_python") or (links[0].requires_python
                                                          if links else None)),
        ("author", meta.get("author") or meta.get("author_email")),
        ("license", meta.get("license_expression") or meta.get("license")),
        ("from index", meta_stage if found else None),
    ]
    docs = _docs_link(server, base, stage, project, version)
    yanked = [item for item in links if item.yanked]
    body = [
        f"<h1>{e(meta.get('name') or project)} {e(version)}</h1>",
        f'<p class="muted">{e(meta.get("summary") or "")}</p>',
    ]
    if yanked and len(yanked) == len(links):
        reason = next((y.yanked for y in yanked if isinstance(y.yanked, str)), "")
        body.append(f'<p>{badge("yanked", "warn")} <span class="yanked">{e(reason)}</span></p>')
    body += [
        f"<pre>pip install --index-url {e(base)}/{e(stage)}/+simple/ "
        f"{e(project)}=={e(version)}</pre>",
        f'<div class="grid"><div class="card">{kv(facts)}'
        + (f"<p>{docs}</p>" if docs else "") + f"{_project_urls(meta)}</div>"
        + ('<div class="card"><strong>Requires</strong><ul>'
           + "".join(f"<li><code>{e(r)}</code></li>" for r in requires if isinstance(r, str))
           + "</ul></div>" if requires else "") + "</div>",
        "<h2>Files</h2>",
        files_table(base, links, _tox_reports(server, stage, project)),
    ]
    if description:
        body.append(f'<h2>Description</h2><div class="description">{description}</div>')
    crumbs = [(base + "/", "home"), (f"{base}/{user}", user), (f"{base}/{stage}", stage),
              (f"{base}/{stage}/{project}", project)]
    return send(request, page(base, f"{project} {version}", join(body), crumbs=crumbs,
                              serial=server.store.serial))


@app.route("/<user>/<index>/<project>/<version>/+docs", methods=["GET", "HEAD"])
async def framed_docs(server: DevpidServer, request: Any, user: str, index: str,
                      project: str, version: str) -> bytes:
    """The uploaded docs (``+doc/``, sandboxed by its own CSP) framed by the site."""
    base = server.outside_url(request)
    stage = f"{user}/{index}"
    project = normalize_name(project)
    who = await viewer(server, request)
    try:
        _stage_or_404(server, who, stage)
        if server.store.get(keys.doc(stage, project, version)) is None:
            raise not_found(f"no documentation for {project} {version} in {stage}")
    except HTTPError as error:
        return error_page(server, request, error)
    docs = f"{base}/{paths.docs_url(stage, project, version)}"
    body = join([
        f"<p>{e(project)} {e(version)} documentation · {link(docs, 'open without the frame')}"
        "</p>",
        f'<iframe src="{e(docs)}" title="documentation" '
        'style="width:100%;height:80vh;border:1px solid var(--line);background:#fff">'
        "</iframe>",
    ])
    crumbs = [(base + "/", "home"), (f"{base}/{user}", user), (f"{base}/{stage}", stage),
              (f"{base}/{stage}/{project}", project),
              (f"{base}/{stage}/{project}/{version}", version)]
    return send(request, page(base, f"{project} {version} docs", body, crumbs=crumbs))


# -- search ---------------------------------------------------------------------------------
def _start_list_indexing(server: DevpidServer, indexes: list[tuple[str, dict[str, Any]]]) -> None:
    """Have each readable mirror's project list indexed (in the background, never waited
    for: a list not fetched yet is asked for and indexed when it arrives)."""
    from twisted.internet.defer import ensureDeferred

    mirror = server.mirror
    index = server.web_search
    for stage, config in indexes:
        if config.get("type") != "mirror":
            continue
        d = ensureDeferred(mirror.project_names_text(stage, config))
        d.addCallback(lambda text, name: index.mirror_list(name, text), stage)
        d.addErrback(lambda failure: None)  # the mirror logs its own fetch errors


@app.route("/+search", methods=["GET", "HEAD"])
async def search_page(server: DevpidServer, request: Any) -> bytes:
    """``/+search?q=WORDS``: projects by name, summary and description words (HTML for
    browsers, devpi-style JSON for clients)."""
    from devpid.web.app import header, json_response
    from devpid.web.html.search import SearchUnavailable
    from devpid.web.negotiate import TEXT_HTML, VIEW_JSON, choose_view

    choice = choose_view(header(request, b"accept"))
    if choice is None:
        raise HTTPError(406, "not acceptable: this URL answers text/html or application/json")
    raw = (request.args.get(b"q") or [b""])[0]
    query = raw.decode("utf-8", "replace").strip()[:200]
    base = server.outside_url(request)
    who = await viewer(server, request)
    indexes = readable_indexes(server, who)
    readable = dict(indexes)
    _start_list_indexing(server, indexes)
    index = server.web_search
    error = None
    hits = []
    if query:
        try:
            hits = [h for h in await index.query(query, sorted(readable))
                    if h.stage in readable]
        except SearchUnavailable as e_:
            error = str(e_)
    if choice == VIEW_JSON:
        if error:
            raise HTTPError(503, error)
        return json_response(request, type="search", result=[
            {"name": h.name, "stage": h.stage, "version": h.version or None,
             "summary": h.summary or None, "mirror": h.mirror} for h in hits])
    assert choice == TEXT_HTML
    rows = "".join(
        f"<tr><td>{link(f'{base}/{h.stage}/{h.name}', h.name)}</td>"
        f"<td>{link(f'{base}/{h.stage}', h.stage)}</td><td>{e(h.version)}</td>"
        f"<td>{e(h.summary) if not h.mirror else Safe('<span class=muted>upstream name</span>')}"
        "</td></tr>" for h in hits)
    body = ["<h1>Search</h1>"]
    if error:
        body.append(f'<p>{badge("unavailable", "bad")} {e(error)}</p>')
    elif query:
        body.append(f"<p>{len(hits)} result{'s' if len(hits) != 1 else ''} for "
                    f"<strong>{e(query)}</strong></p>")
        if hits:
            body.append("<table><thead><tr><th>project</th><th>index</th><th>latest</th>"
                        f"<th>summary</th></tr></thead><tbody>{rows}</tbody></table>")
    else:
        body.append('<p class="muted">Type words of a project name, summary or description.</p>')
    if index.listing:
        body.append(f'<p class="small muted">Still indexing the project list of '
                    f"{e(', '.join(sorted(index.listing)))}; its names will be found shortly.</p>")
    return send(request, page(base, f"Search {query}" if query else "Search", join(body),
                              crumbs=[(base + "/", "home")], query=query,
                              serial=server.store.serial))
