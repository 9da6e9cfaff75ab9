"""``GET /+metrics``: the server's health as Prometheus text (exposition format 0.0.4).

What ``/+status`` says in JSON (serial, mirrors' upstream state, replication lag, event hooks'
backlog, the last blob sweep) becomes gauges here, next to request counters kept by the site's
access log and the process's memory and open files, so an ops person can graph and alert on
it without parsing JSON. Every number is read when scraped; nothing here runs on its own.

With ``--workers N`` each process answers with its own counters (the request went to one of
them); the gauges that come from the database are the same in all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class RequestCounters:
    """Responses by status class, bytes sent and time spent: cheap enough for every request."""

    def __init__(self) -> None:
        self.by_class = [0] * 6  # index = status // 100 (1xx..5xx; 0 for anything odd)
        self.bytes = 0
        self.seconds = 0.0

    def count(self, code: int, size: int, duration_ms: float) -> None:
        self.by_class[code // 100 if 100 <= code < 600 else 0] += 1
        self.bytes += size
        self.seconds += duration_ms / 1000.0


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: Any, **labels: str) -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            self.samples.append((labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


# (metric name, type, help, key in the status dict) for plain numbers, per part of /+status.
_SERVER = [
    ("serial", "gauge", "The last committed serial.", "serial"),
    ("last_commit_timestamp_seconds", "gauge", "When the last serial was committed.",
     "last-commit-timestamp"),
    ("start_time_seconds", "gauge", "When this process started.", "started"),
    ("fast_requests_total", "counter", "Requests answered by the fast front door.",
     "fast-requests"),
    ("offline_mode", "gauge", "1 when upstreams are never contacted.", "offline-mode"),
    ("login_failures_total", "counter", "Wrong passwords (logins and Basic auth).",
     "login-failures"),
    ("login_throttled_total", "counter", "Password checks refused after repeated failures.",
     "login-throttled"),
    ("audit_queued", "gauge", "Audit rows waiting for the writer thread.", "audit-queued"),
    ("audit_dropped_total", "counter", "Audit rows dropped because the queue was full.",
     "audit-dropped"),
]
_MIRROR = [  # labelled with the mirror's stage
    ("mirror_upstream_consecutive_failures", "gauge", "Failed upstream requests in a row.",
     "consecutive_failures"),
    ("mirror_upstream_failures_total", "counter",
     "Failed upstream requests (errors, timeouts, answers that are no valid page).",
     "failures_total"),
    ("mirror_download_failures_total", "counter",
     "File downloads that failed (stalled, too slow, cut off, wrong hash, disk full).",
     "download_failures"),
    ("mirror_upstream_last_success_timestamp_seconds", "gauge",
     "When the upstream last answered.", "last_success"),
    ("mirror_downloads_in_progress", "gauge", "Files being fetched upstream now.",
     "downloads_in_progress"),
]
_MIRROR_CACHE = [  # labelled with the mirror's stage (see devpid.mirror.cache)
    ("mirror_cache_bytes", "gauge", "Bytes of cached mirror files.", "bytes"),
    ("mirror_cache_files", "gauge", "Cached mirror files.", "files"),
    ("mirror_cache_max_bytes", "gauge", "The mirror_max_bytes bound (absent: none).",
     "max_bytes"),
    ("mirror_cache_hits_total", "counter", "File requests served from the cache.", "hits"),
    ("mirror_cache_misses_total", "counter", "File requests that went upstream.", "misses"),
    ("mirror_cache_hit_ratio", "gauge", "hits / (hits + misses) since the start.",
     "hit_ratio"),
    ("mirror_cache_evictions_total", "counter", "Files evicted to stay within the bound.",
     "evictions"),
    ("mirror_cache_evicted_bytes_total", "counter", "Bytes evicted.", "evicted_bytes"),
]
_REPLICA = [
    ("replica_lag_serials", "gauge", "Serials the primary has and this replica not.", "lag"),
    ("replica_in_sync", "gauge", "1 when the replica has every serial.", "in-sync"),
    ("replica_primary_serial", "gauge", "The primary's last serial seen.", "primary-serial"),
    ("replica_last_contact_timestamp_seconds", "gauge", "When the primary last answered.",
     "last-contact"),
]
_GC = [
    ("blob_gc_removed_total", "counter", "Unreferenced files removed.", "removed_total"),
    ("blob_gc_freed_bytes_total", "counter", "Bytes freed by sweeps.", "freed_bytes_total"),
    ("blob_gc_failures", "gauge", "Failed sweeps in a row.", "failures"),
]
_CONNECTIONS = [  # per process (see devpid.web.connections)
    ("connections_open", "gauge", "Open client connections.", "open"),
    ("connections_limit", "gauge", "The --max-connections in effect.", "limit"),
    ("connections_evicted_total", "counter", "Idle connections dropped at the limit.",
     "evicted"),
    ("connections_refused_total", "counter", "Connections answered 503 at the limit.",
     "refused"),
]


class _Families(dict[str, _Family]):
    def get_family(self, name: str, kind: str, help_text: str) -> _Family:
        if name not in self:
            self[name] = _Family("devpid_" + name, kind, help_text)
        return self[name]

    def add_all(
        self, table: list[tuple[str, str, str, str]], source: dict[str, Any], **labels: str
    ) -> None:
        for name, kind, help_text, key in table:
            self.get_family(name, kind, help_text).add(source.get(key), **labels)


def render(status: dict[str, Any], counters: RequestCounters | None) -> bytes:
    """The Prometheus text for one ``/+status`` result and the request counters."""
    out = _Families()
    family = out.get_family
    family("info", "gauge", "Always 1; the labels say what runs.").add(
        1,
        version=str((status.get("versioninfo") or {}).get("devpid", "")),
        role=str(status.get("role", "")),
        uuid=str(status.get("uuid", "")),
    )
    out.add_all(_SERVER, status)
    if counters is not None:
        responses = family("http_responses_total", "counter", "Responses by status class.")
        for n, count in enumerate(counters.by_class):
            if n:
                responses.add(count, code=f"{n}xx")
        family("http_response_bytes_total", "counter", "Body bytes sent.").add(counters.bytes)
        family("http_response_seconds_total", "counter", "Time spent answering.").add(
            counters.seconds
        )
    for stage, mirror in sorted((status.get("mirrors") or {}).items()):
        up = not mirror.get("in_backoff") and not mirror.get("consecutive_failures")
        family("mirror_upstream_up", "gauge", "1 while the upstream answers, 0 in backoff.").add(
            up, stage=stage
        )
        out.add_all(_MIRROR, mirror, stage=stage)
        family("mirror_project_list_names", "gauge", "Names in the cached upstream list.").add(
            (mirror.get("project_list") or {}).get("names"), stage=stage
        )
    for stage, cache in sorted((status.get("mirror-cache") or {}).items()):
        out.add_all(_MIRROR_CACHE, cache, stage=stage)
    total = status.get("mirror-cache-total")
    if isinstance(total, dict):
        family("mirror_cache_total_bytes", "gauge", "Bytes of all cached mirror files.").add(
            total.get("bytes"))
        family("mirror_cache_total_max_bytes", "gauge", "The --mirror-max-bytes bound.").add(
            total.get("max_bytes"))
    if isinstance(status.get("replica"), dict):
        out.add_all(_REPLICA, status["replica"])
    if isinstance(status.get("polling-replicas"), dict):
        family("polling_replicas", "gauge", "Replicas following this primary.").add(
            len(status["polling-replicas"])
        )
    serial = status.get("serial")
    for hook, state in sorted((status.get("event-hooks") or {}).items()):
        done = state.get("serial")
        family("event_hook_serial", "gauge", "The last serial a hook has handled.").add(
            done, hook=hook
        )
        if isinstance(serial, int) and isinstance(done, int):
            family(
                "event_hook_backlog_serials", "gauge", "Serials a hook has still to handle."
            ).add(max(0, serial - done), hook=hook)
        failed = state.get("failed")
        family(
            "event_hook_failed_serials", "gauge",
            "Serials a hook gave up on (devpid events retry delivers them again).",
        ).add(len(failed) if isinstance(failed, list) else None, hook=hook)
    gc = status.get("blob-gc")
    if isinstance(gc, dict):
        family("blob_gc_last_sweep_timestamp_seconds", "gauge", "When the last sweep ended.").add(
            (gc.get("last") or {}).get("finished")
        )
        out.add_all(_GC, gc)
    if isinstance(status.get("connections"), dict):
        out.add_all(_CONNECTIONS, status["connections"])
    for name, kind, help_text, value in _process():
        family(name, kind, help_text).add(value)
    return "".join(_lines(out.values())).encode()


def _lines(families: Any) -> Iterator[str]:
    for fam in families:
        if not fam.samples:
            continue
        yield f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.kind}\n"
        for labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{fam.name}{{{text}}} {_number(value)}\n" if text else (
                f"{fam.name} {_number(value)}\n"
            )


def _process() -> list[tuple[str, str, str, float]]:
    """Resident memory and open files of this process (Linux /proc; elsewhere nothing)."""
    out: list[tuple[str, str, str, float]] = []
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        out.append(("process_resident_memory_bytes", "gauge", "Resident memory.",
                    float(rss_pages * os.sysconf("SC_PAGE_SIZE"))))
        out.append(("process_open_fds", "gauge", "Open file descriptors.",
                    float(len(os.listdir("/proc/self/fd")))))
    except (OSError, ValueError, IndexError):
        pass
    return out
