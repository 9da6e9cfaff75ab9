"""Project and release views (devpi's JSON), deletion, yanking, and push between indexes."""

from __future__ import annotations

import json
from typing import Any

from devpid import tokens
from devpid.domain import keys, paths
from devpid.domain.permissions import can_delete_from, can_upload_to, owner_of
from devpid.links import (
    Link,
    UpstreamUnavailable,
    collect_links,
    ensure_mirrors,
    resolve,
    version_key,
)
from devpid.model.names import normalize_name
from devpid.web import toxresults
from devpid.web.app import (
    DevpidServer,
    app,
    header,
    json_response,
    log_when,
    overwrite_log,
    query_flag,
    read_json,
    set_serial,
    utc_timestamp,
)
from devpid.web.errors import HTTPError, forbidden, not_found, unauthorized
from devpid.web.negotiate import VIEW_JSON, choose_view, is_installer
from devpid.web.simple import serve_project_page


def _redirect(request: Any, location: str) -> bytes:
    request.setResponseCode(302)
    request.setHeader(b"Location", location.encode())
    return b""


def _link_json(server: DevpidServer, request: Any, link: Link, rel: str,
               log: list[Any] | None) -> dict[str, Any]:
    sha = link.hashes.get("sha256", "")
    out: dict[str, Any] = {
        "rel": rel,
        "href": f"{server.outside_url(request)}/{link.path}",
        "hash_spec": f"sha256={sha}" if sha else "",
        "hashes": dict(link.hashes),
    }
    if log is not None:
        out["log"] = log
    return out


def _stage_versions(
    server: DevpidServer, request: Any, stage: str, project: str, links: list[Link]
) -> dict[str, dict[str, Any]]:
    """versiondata per version for one stage (private: stored metadata; mirror: links)."""
    result: dict[str, dict[str, Any]] = {}
    private = server.store.get(keys.project(stage, project)) is not None
    if private:
        reports: dict[str, list[dict[str, Any]]] = {}  # release file name -> its tox results
        for _key, tox in server.store.items(keys.toxresults_of_project(stage, project)):
            reports.setdefault(tox["for"], []).append(tox)
        for key, meta in server.store.items(keys.release_prefix(stage, project)):
            version = keys.last_part(key)
            result[version] = {**meta, "+links": []}
        for _key, value in server.store.items(keys.file_prefix(stage, project)):
            entry = result.setdefault(value["version"], {"name": project,
                                                        "version": value["version"],
                                                        "+links": []})
            link = Link(value["filename"], value["path"], stage, value["version"],
                        {"sha256": value["sha256"]})
            file_link = _link_json(server, request, link, "releasefile", value.get("log", []))
            entry["+links"].append(file_link)
            if value.get("yanked"):
                entry["yanked"] = value["yanked"]
            for tox in reports.get(value["filename"], ()):
                tox_link = Link(tox["filename"], tox["path"], stage, value["version"],
                                {"sha256": tox["sha256"]})
                entry["+links"].append({
                    **_link_json(server, request, tox_link, "toxresult", tox.get("log", [])),
                    "for_href": file_link["href"],
                })
        for key, value in server.store.items(keys.doc_prefix(stage, project)):
            version = keys.last_part(key)
            entry = result.setdefault(version, {"name": project, "version": version,
                                                "+links": []})
            link = Link(value["filename"], value["path"], stage, version,
                        {"sha256": value["sha256"]})
            entry["+links"].append(_link_json(server, request, link, "doczip",
                                              value.get("log", [])))
        return result
    for link in links:
        if link.stage != stage or not link.version:
            continue
        entry = result.setdefault(link.version, {"name": project, "version": link.version,
                                                 "+links": []})
        if link.requires_python:
            entry["requires_python"] = link.requires_python
        if link.yanked:
            entry["yanked"] = link.yanked
        entry["+links"].append(_link_json(server, request, link, "releasefile", None))
    return result


async def project_links(server: DevpidServer, stage: str, project: str
                        ) -> tuple[list[Link], bool]:
    """``collect_links`` for a view of one project: its mirrors asked first (a project not
    cached yet is not a 404), an unreachable upstream as its 502/503."""
    await ensure_mirrors(server, stage, project)
    try:
        return await collect_links(server, stage, project)
    except UpstreamUnavailable as e:
        raise HTTPError(e.status, e.message) from None


async def project_versions(
    server: DevpidServer, request: Any, stage: str, project: str, ignore_bases: bool
) -> dict[str, dict[str, Any]]:
    links, known = await project_links(server, stage, project)
    stages = [stage] if ignore_bases else [name for name, _ in resolve(server, stage,
                                                                        project).stages]
    merged: dict[str, dict[str, Any]] = {}
    for name in stages:
        for version, data in _stage_versions(server, request, name, project, links).items():
            if version in merged:
                merged[version].setdefault("+shadowing", []).append(data)
            else:
                merged[version] = data
    if not merged and not known:
        raise not_found(f"no project '{project}'")
    return dict(sorted(merged.items(), key=lambda kv: version_key(kv[0]), reverse=True))


@app.route("/<user>/<index>/<project>", methods=["GET", "HEAD"])
@app.route("/<user>/<index>/<project>/", methods=["GET", "HEAD"])
async def get_project(
    server: DevpidServer, request: Any, user: str, index: str, project: str
) -> bytes:
    stage = f"{user}/{index}"
    normal = normalize_name(project)
    slash = request.path.endswith(b"/")
    if normal != project:
        return _redirect(request, f"{server.outside_url(request)}/{stage}/{normal}"
                         + ("/" if slash else ""))
    if is_installer(header(request, b"user-agent")):
        prefix = "../../../" if slash else "../../"
        return await serve_project_page(server, request, user, index, project, prefix)
    if server.index_config(stage) is None:
        raise not_found(f"The stage {stage} could not be found.")
    if choose_view(header(request, b"accept")) != VIEW_JSON:  # browsers: devpid/web/html
        raise HTTPError(406, "not acceptable: this URL answers text/html or application/json")
    result = await project_versions(server, request, stage, project,
                                    query_flag(request, b"ignore_bases"))
    return json_response(request, result=result, type="projectconfig")


@app.route("/<user>/<index>/<project>/<version>", methods=["GET", "HEAD"])
@app.route("/<user>/<index>/<project>/<version>/", methods=["GET", "HEAD"])
async def get_version(
    server: DevpidServer, request: Any, user: str, index: str, project: str, version: str
) -> bytes:
    stage = f"{user}/{index}"
    normal = normalize_name(project)
    if normal != project:
        return _redirect(request, f"{server.outside_url(request)}/{stage}/{normal}/{version}")
    if server.index_config(stage) is None:
        raise not_found(f"The stage {stage} could not be found.")
    versions = await project_versions(server, request, stage, project, False)
    if version not in versions:
        raise not_found(f"The version {version} of project {project} does not exist.")
    return json_response(request, result=versions[version], type="versiondata")


# -- deletion ----------------------------------------------------------------------------------
async def _deletion_allowed(
    server: DevpidServer, request: Any, user: str, index: str, what: str
) -> tuple[str, dict[str, Any]]:
    stage = f"{user}/{index}"
    config = server.index_config(stage)
    if config is None:
        raise not_found(f"The stage {stage} could not be found.")
    actor = await server.identify(request)
    if actor is None:
        raise unauthorized()
    if not can_delete_from(actor, user, config):
        raise forbidden(f"no permission to delete {what} on {stage}")
    if not config.get("volatile", True) and not query_flag(request, b"force"):
        raise forbidden(
            f"cannot delete {what} on non-volatile index {stage} (use devpi remove -f)"
        )
    return stage, config


def _delete_version_keys(tx: Any, stage: str, project: str, version: str) -> None:
    tx.delete(keys.release(stage, project, version))
    tx.delete(keys.doc(stage, project, version))
    for key, value in tx.items(keys.file_prefix(stage, project)):
        if value.get("version") == version:
            toxresults.file_changing(tx, stage, project, value["filename"], None)
            tx.delete(key)


def _drop_empty_project(tx: Any, stage: str, project: str) -> None:
    if not tx.keys(keys.release_prefix(stage, project)) and not tx.keys(
        keys.file_prefix(stage, project)
    ):
        tx.delete(keys.project(stage, project))


@app.route("/<user>/<index>/<project>", methods=["DELETE"])
@app.route("/<user>/<index>/<project>/", methods=["DELETE"])
async def delete_project(
    server: DevpidServer, request: Any, user: str, index: str, project: str
) -> bytes:
    stage, _config = await _deletion_allowed(server, request, user, index, "project")
    project = normalize_name(project)
    prefixes = keys.of_project(stage, project)
    found = [k for p in prefixes for k in server.store.keys(p)]
    single = [keys.project(stage, project), keys.mirror_page(stage, project)]
    found += [k for k in single if server.store.get(k) is not None]
    if not found:
        raise not_found(f"project {project} not found on {stage}")
    async with server.store.write() as tx:
        for key in found:
            tx.delete(key)
    set_serial(request, tx.serial)
    return json_response(request, message=f"project {project} deleted from stage {stage}")


@app.route("/<user>/<index>/<project>/<version>", methods=["DELETE"])
@app.route("/<user>/<index>/<project>/<version>/", methods=["DELETE"])
async def delete_version(
    server: DevpidServer, request: Any, user: str, index: str, project: str, version: str
) -> bytes:
    stage, _config = await _deletion_allowed(server, request, user, index, "version")
    project = normalize_name(project)
    has_release = server.store.get(keys.release(stage, project, version)) is not None
    has_files = any(
        v.get("version") == version
        for _, v in server.store.items(keys.file_prefix(stage, project))
    )
    if not (has_release or has_files):
        raise not_found(f"The version {version} of project {project} does not exist.")
    async with server.store.write() as tx:
        _delete_version_keys(tx, stage, project, version)
        _drop_empty_project(tx, stage, project)
    set_serial(request, tx.serial)
    return json_response(request, message=f"project '{project}' version '{version}' deleted")


@app.route("/<user>/<index>/+f/<path:rest>", methods=["DELETE"])
async def delete_file(server: DevpidServer, request: Any, user: str, index: str,
                      rest: str) -> bytes:
    stage, _config = await _deletion_allowed(server, request, user, index, "file")
    try:
        path = paths.in_area(stage, paths.FILES_AREA, rest)
    except paths.UnsafePath as e:
        raise not_found(f"package '{e.path}' doesn't exist") from None
    found = server.store.lookup_path(path)
    if found is None or found[0].startswith(keys.MIRRORS):
        raise not_found(f"package '{path}' doesn't exist")
    key = found[0]
    value = server.store.get(key)
    async with server.store.write() as tx:
        if key.startswith(keys.FILES) and isinstance(value, dict):
            toxresults.file_changing(tx, stage, keys.parse(key).project, value["filename"], None)
        tx.delete(key)
        if key.startswith(keys.FILES) and isinstance(value, dict):
            project = keys.parse(key).project
            version = value.get("version")
            remaining = [v for _, v in tx.items(keys.file_prefix(stage, project))
                         if v.get("version") == version]
            if not remaining and tx.get(keys.doc(stage, project, str(version))) is None:
                tx.delete(keys.release(stage, project, str(version)))
            _drop_empty_project(tx, stage, project)
    set_serial(request, tx.serial)
    return json_response(request, message=f"package '{path}' deleted")


# -- yanking (PEP 592) -------------------------------------------------------------------------
async def _set_yanked(server: DevpidServer, request: Any, user: str, index: str, project: str,
                      version: str, yanked: bool | str) -> bytes:
    stage = f"{user}/{index}"
    config = server.index_config(stage)
    if config is None or config.get("type") == "mirror":
        raise not_found(f"The stage {stage} could not be found or is a mirror.")
    actor = await server.identify(request)
    if actor is None:
        raise unauthorized()
    if not can_delete_from(actor, user, config):
        raise forbidden(f"no permission to yank on {stage}")
    project = normalize_name(project)
    files = [(k, v) for k, v in server.store.items(keys.file_prefix(stage, project))
             if v.get("version") == version]
    if not files:
        raise not_found(f"The version {version} of project {project} has no files.")
    async with server.store.write() as tx:
        for key, value in files:
            tx.set(key, {**value, "yanked": yanked})
    set_serial(request, tx.serial)
    what = "yanked" if yanked else "unyanked"
    return json_response(request, message=f"{project} {version} {what}")


@app.route("/<user>/<index>/<project>/<version>/+yank", methods=["POST"])
async def yank(server: DevpidServer, request: Any, user: str, index: str, project: str,
               version: str) -> bytes:
    body = read_json(request) if request.content.read(1) else None
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and not isinstance(reason, str):
        raise HTTPError(400, "reason must be a string")
    return await _set_yanked(server, request, user, index, project, version, reason or True)


@app.route("/<user>/<index>/<project>/<version>/+unyank", methods=["POST"])
async def unyank(server: DevpidServer, request: Any, user: str, index: str, project: str,
                 version: str) -> bytes:
    return await _set_yanked(server, request, user, index, project, version, False)


# -- push ------------------------------------------------------------------------------------
async def handle_push(server: DevpidServer, request: Any, user: str, index: str) -> Any:
    """``devpi push name==version target/index``: copy a release between indexes."""
    body = read_json(request)
    if not isinstance(body, dict):
        raise HTTPError(400, "push body must be a JSON object")
    stage = f"{user}/{index}"
    if server.index_config(stage) is None:
        raise not_found(f"The stage {stage} could not be found.")
    name, version = body.get("name"), body.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise HTTPError(400, f"there are no files for {name} {version} on stage {stage}")
    if "posturl" in body:
        raise HTTPError(400, "push to an external index is not supported; use twine upload")
    target = body.get("targetindex")
    if not isinstance(target, str) or target.count("/") != 1:
        raise HTTPError(400, "targetindex not in format user/index")
    extra = set(body) - {"name", "version", "targetindex", "no_docs", "only_docs"}
    if extra:
        raise HTTPError(400, "unknown additional options: " + ", ".join(sorted(extra)))
    if body.get("no_docs") and body.get("only_docs"):
        raise HTTPError(400, "can't use 'no_docs' and 'only_docs' together")
    target_config = server.index_config(target)
    if target_config is None:
        raise not_found(f"target index {target} does not exist")
    if target_config.get("type") == "mirror":
        raise HTTPError(400, "cannot push to a mirror index")
    actor = await server.identify(request)
    tokens.check_target(request, target)  # a scoped token writes only where it may
    tuser = owner_of(target)
    if not can_upload_to(actor, tuser, target_config):
        if actor is None:
            raise unauthorized()
        raise HTTPError(401, f"user {actor!r} cannot upload to {target!r}")
    from devpid.readacl import require_read

    await require_read(server, request, stage)  # a push copies what the source serves
    project = normalize_name(name)
    meta = server.store.get(keys.release(stage, project, version))
    files = [] if body.get("only_docs") else [
        v for _, v in server.store.items(keys.file_prefix(stage, project))
        if v.get("version") == version
    ]
    doc = None if body.get("no_docs") else server.store.get(keys.doc(stage, project, version))
    if meta is None:
        raise HTTPError(400, f"there are no files for {name} {version} on stage {stage}")
    if not files and doc is None:
        raise not_found(f"no release/files found for {name} {version}")
    volatile = target_config.get("volatile", True)
    actionlog: list[list[Any]] = [[200, "register", project, version, "->", target]]
    push_log = {"what": "push", "who": actor, "when": log_when(), "src": stage, "dst": target}
    async with server.store.write() as tx:
        for value in files:
            tkey = keys.file(target, project, value["filename"])
            existing = tx.get(tkey)
            if existing is not None and not volatile:
                raise HTTPError(409, f"{value['filename']} already exists in non-volatile index")
            sha = value["sha256"]
            copied = {**value, "path": paths.file_path(target, sha, value["filename"]),
                      "upload_time": utc_timestamp(),
                      "log": overwrite_log(existing)
                      + [e for e in value.get("log", []) if e.get("what") != "overwrite"]
                      + [push_log]}
            toxresults.file_changing(tx, target, project, value["filename"], copied)
            tx.set(tkey, copied)
            actionlog.append([200, "store_releasefile", copied["path"]])
            for path in toxresults.copy_for_push(
                tx, stage, target, project, value["filename"],
                paths.file_dir(target, sha), push_log,
            ):
                actionlog.append([200, "store_toxresult", path])
        if doc is not None:
            sha = doc["sha256"]
            tx.set(keys.doc(target, project, version), {
                **doc, "path": paths.file_path(target, sha, doc["filename"]),
                "log": [*doc.get("log", []), push_log]})
            actionlog.append([200, "store_doczip", project, version, "->", target])
        if tx.get(keys.project(target, project)) is None:
            tx.set(keys.project(target, project), {"name": meta.get("name", name),
                                                   "created": utc_timestamp()})
        tx.set(keys.release(target, project, version), meta)
    set_serial(request, tx.serial)
    return json_response(request, result=actionlog, type="actionlog")


async def post_json_hook(server: DevpidServer, request: Any, user: str, index: str) -> Any:
    ctype = header(request, b"content-type") or ""
    if request.method == b"PUSH" or ctype.startswith("application/json"):
        return await handle_push(server, request, user, index)
    return None



# -- PyPI's JSON API shape (some tools read it) -------------------------------------------------
def _pypi_file(server: DevpidServer, request: Any, link: Link) -> dict[str, Any]:
    kind = "bdist_wheel" if link.filename.endswith(".whl") else "sdist"
    return {
        "filename": link.filename,
        "url": f"{server.outside_url(request)}/{link.path}",
        "digests": dict(link.hashes),
        "requires_python": link.requires_python,
        "yanked": bool(link.yanked),
        "yanked_reason": link.yanked if isinstance(link.yanked, str) else None,
        "size": link.size,
        "upload_time_iso_8601": link.upload_time,
        "packagetype": kind,
    }


@app.route("/<user>/<index>/pypi/<project>/json", methods=["GET"])
@app.route("/<user>/<index>/pypi/<project>/<version>/json", methods=["GET"])
async def pypi_json(server: DevpidServer, request: Any, user: str, index: str, project: str,
                    version: str | None = None) -> bytes:
    """``/USER/INDEX/pypi/PROJECT/json``: PyPI's JSON API over the index's merged view."""
    stage = f"{user}/{index}"
    if server.index_config(stage) is None:
        raise not_found(f"The stage {stage} could not be found.")
    normal = normalize_name(project)
    links, known = await project_links(server, stage, normal)
    if not links and not known:
        raise not_found(f"no project '{normal}'")
    releases: dict[str, list[dict[str, Any]]] = {}
    for link in links:
        if link.version:
            releases.setdefault(link.version, []).append(_pypi_file(server, request, link))
    ordered = sorted(releases, key=version_key)
    stable = [v for v in ordered if not _is_prerelease(v)]
    candidates = stable or ordered
    chosen: str | None = version or (candidates[-1] if candidates else None)
    if version is not None and version not in releases:
        raise not_found(f"The version {version} of project {normal} does not exist.")
    meta: dict[str, Any] = {}
    for name, _config in resolve(server, stage, normal).stages:
        stored = server.store.get(keys.release(name, normal, str(chosen)))
        if stored:
            meta = stored
            break
    info = {
        "name": meta.get("name", normal),
        "version": chosen,
        "summary": meta.get("summary"),
        "requires_python": meta.get("requires_python"),
        "requires_dist": meta.get("requires_dist") or None,
        "license": meta.get("license"),
        "home_page": meta.get("home_page"),
        "author": meta.get("author"),
        "project_urls": meta.get("project_urls") or None,
        "yanked": all(f["yanked"] for f in releases.get(str(chosen), [])) and bool(releases),
    }
    body = {
        "info": info,
        "releases": {} if version else {v: releases[v] for v in ordered},
        "urls": releases.get(str(chosen), []),
    }
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode()


def _is_prerelease(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False
