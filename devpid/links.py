"""What a project page lists: links merged over an index's resolution order.

An index serves its own files merged with those of its bases (depth-first, each index once,
mirrors last). The private-first rule guards against dependency confusion: once a project
exists in any private stage of the chain, mirror stages contribute nothing for it unless the
project (or ``*``) is in ``mirror_whitelist``. Mirrors are not even asked in that case, so
private names never leak upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from devpid.domain import keys
from devpid.mirror.policy import cooldown_of, filter_links
from devpid.model.indexes import resolution_order
from devpid.store.base import Store


class UpstreamUnavailable(Exception):
    """A mirror could not be asked about a project and has nothing cached for it."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class Link:
    """One downloadable file as a simple page shows it."""

    filename: str
    path: str  # served path below the server root: "{stage}/+f/.../{filename}"
    stage: str
    version: str | None
    hashes: dict[str, str]
    requires_python: str | None = None
    yanked: bool | str = False
    core_metadata: dict[str, str] | bool = False
    size: int | None = None
    upload_time: str | None = None


def version_key(version: str | None) -> tuple[int, Any]:
    """Sort key: parseable versions by PEP 440, others after them by text."""
    if version is None:
        return (2, "")
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


def link_from_file_value(stage: str, value: dict[str, Any]) -> Link:
    metadata_sha = value.get("metadata_sha256")
    return Link(
        filename=value["filename"],
        path=value["path"],
        stage=stage,
        version=value.get("version"),
        hashes={"sha256": value["sha256"]},
        requires_python=value.get("requires_python") or None,
        yanked=value.get("yanked", False),
        core_metadata={"sha256": metadata_sha} if metadata_sha else False,
        size=value.get("size"),
        upload_time=value.get("upload_time"),
    )


def private_links(store: Store, stage: str, project: str) -> list[Link]:
    links = [
        link_from_file_value(stage, value)
        for _, value in store.items(keys.file_prefix(stage, project))
    ]
    links.sort(key=lambda link: (version_key(link.version), link.filename))
    return links


def has_private_project(store: Store, stage: str, project: str) -> bool:
    return store.get(keys.project(stage, project)) is not None


def sro(server: Any, stage: str) -> list[tuple[str, dict[str, Any]]]:
    """The resolution order, cached until any index config changes."""
    tokens: PageTokens = server.page_tokens
    cache = tokens.sro_cache
    token = tokens.config_serial
    hit = cache.get(stage)
    if hit is not None and hit[0] == token:
        return hit[1]
    order = [(name, dict(config)) for name, config in resolution_order(stage, server.index_config)]
    cache[stage] = (token, order)
    return order


@dataclass
class Resolution:
    """Which stages contribute to a project page, and why mirrors were skipped."""

    stages: list[tuple[str, dict[str, Any]]]
    blocked_mirrors: list[str]
    private_hit: bool


def resolve(server: Any, stage: str, project: str) -> Resolution:
    """Apply the private-first rule over the resolution order of ``stage``."""
    order = sro(server, stage)
    if not order:
        return Resolution([], [], False)
    requested = order[0][1]
    inheritance = requested.get("mirror_whitelist_inheritance", "union")
    whitelist: set[str] | None = None
    whitelisted = False
    private_hit = False
    contributing: list[tuple[str, dict[str, Any]]] = []
    blocked: list[str] = []
    for name, config in order:
        if config.get("type") == "mirror":
            if private_hit and not whitelisted:
                blocked.append(name)
            else:
                contributing.append((name, config))
            continue
        own = set(config.get("mirror_whitelist") or [])
        if whitelist is None:
            whitelist = own
        elif inheritance == "intersection":
            whitelist &= own
        else:
            whitelist |= own
        if "*" in whitelist or project in whitelist:
            whitelisted = True
        if has_private_project(server.store, name, project):
            if not ("*" in whitelist or project in whitelist):
                private_hit = True
            contributing.append((name, config))
    return Resolution(contributing, blocked, private_hit)


async def ensure_mirrors(server: Any, stage: str, project: str) -> None:
    """Have every mirror in ``stage``'s resolution order fetched (or refreshed) ``project``,
    as a simple page does before collect_links; views that show a project need it too."""
    mirror = server.mirror
    for name, config in resolve(server, stage, project).stages:
        if config.get("type") == "mirror":
            await mirror.ensure(name, config, project)


async def collect_links(server: Any, stage: str, project: str) -> tuple[list[Link], bool]:
    """All links of ``project`` as seen through ``stage``; and whether anything knows it.

    A mirror that fails while another stage has the project is treated as having no
    releases for it (devpi issue353); if the requested index itself is a mirror, or no stage
    knows the project, the upstream error propagates (502/503, never a misleading 404).
    """
    resolution = resolve(server, stage, project)
    mirror = server.mirror
    seen: set[str] = set()
    links: list[Link] = []
    known = False
    errors: list[UpstreamUnavailable] = []
    for name, config in resolution.stages:
        if config.get("type") == "mirror":
            try:  # (callers asked upstream first: ensure_mirrors)
                stage_links = await mirror.project_links(name, config, project)
            except UpstreamUnavailable as e:
                errors.append(e)
                continue
            if stage_links is None:
                continue
            stage_links = _apply_cooldown(server, name, config, project, stage_links)
        else:
            stage_links = private_links(server.store, name, project)
        known = True
        for link in stage_links:
            if link.filename not in seen:
                seen.add(link.filename)
                links.append(link)
    if errors and (not known or resolution.stages[0][1].get("type") == "mirror"):
        raise errors[0]
    return links, known


def _apply_cooldown(
    server: Any, stage: str, config: dict[str, Any], project: str, links: list[Link]
) -> list[Link]:
    """A mirror's links minus those its release cooldown holds back now (mirror/policy.py);
    remembers when the result next changes, for project_token."""
    cooldown = cooldown_of(config)
    if cooldown is None:
        return links
    kept, next_change = filter_links(cooldown, project, links, server.reactor.seconds())
    server.page_tokens.cooldown_until[(stage, project)] = next_change
    return kept


def project_token(server: Any, stage: str, project: str) -> tuple[Any, ...]:
    """Changes whenever anything a page of ``project`` in ``stage`` shows may have changed:
    serials, and for a mirror with a release cooldown, the time a held-back file ages in."""
    tokens: PageTokens = server.page_tokens
    serials = tokens.project_serials
    parts: list[Any] = [tokens.config_serial]
    for name, config in sro(server, stage):
        parts.append(serials.get((name, project), -1))
        if cooldown_of(config) is not None:
            until = tokens.cooldown_until.get((name, project))
            parts.append("due" if until is not None and server.reactor.seconds() >= until
                         else until)
    return tuple(parts)


@dataclass
class PageTokens:
    """The serials that decide whether a page cached in this process is still valid."""

    config_serial: int  # of the last change to any index config or user
    project_serials: dict[tuple[str, str], int] = field(default_factory=dict)
    cooldown_until: dict[tuple[str, str], float | None] = field(default_factory=dict)
    sro_cache: dict[str, tuple[int, list[tuple[str, dict[str, Any]]]]] = field(
        default_factory=dict)


def track_commits(store: Store) -> PageTokens:
    """Per-(stage, project) and config serials, kept current by the store's commits."""
    # Pages cached in this process start empty, so "nothing changed yet" (-1 per project and
    # the serial at start for configs) is a valid starting token.
    tokens = PageTokens(config_serial=store.serial)
    serials = tokens.project_serials

    def listener(serial: int, changes: dict[str, Any]) -> None:
        for key in changes:
            parts = keys.parse(key)
            if parts.kind in ("index", "user"):
                tokens.config_serial = serial
            elif parts.kind in ("project", "release", "file", "doc", "mirror") and parts.project:
                serials[(parts.stage, parts.project)] = serial

    store.add_commit_listener(listener)
    return tokens
