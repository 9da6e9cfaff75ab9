"""Mirror policy: a release cooldown on mirror indexes.

Supply-chain attacks on public indexes are usually found and removed within days, so a
mirror may hold back files until they are old enough (``mirror_min_age``) or refuse anything
uploaded after a fixed date (``mirror_exclude_newer``), centrally instead of relying on
every client's ``--exclude-newer``. Age is judged by the upstream's PEP 700 ``upload-time``;
a file without one is held back unless ``mirror_min_age_unknown`` is ``allow``. Projects in
``mirror_min_age_exempt`` are never held back.

Pure functions over index configs and links (no Twisted), so the rules are unit-tested and
the web layer only asks "which links may be shown now, and when does that change?".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, TypeVar

__all__ = [
    "POLICY_KEYS",
    "Cooldown",
    "PolicyError",
    "available_at",
    "coerce_policy_value",
    "cooldown_of",
    "filter_links",
    "format_time",
    "parse_cutoff",
    "parse_duration",
    "parse_size",
    "parse_upload_time",
    "refusal_message",
]

MIN_AGE = "mirror_min_age"
UNKNOWN = "mirror_min_age_unknown"
EXEMPT = "mirror_min_age_exempt"
EXCLUDE_NEWER = "mirror_exclude_newer"
MAX_BYTES = "mirror_max_bytes"
POLICY_KEYS = (MIN_AGE, UNKNOWN, EXEMPT, EXCLUDE_NEWER, MAX_BYTES)

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:\d+[wdhms])+")
_PART_RE = re.compile(r"(\d+)([wdhms])")
_MAX_DURATION = 100 * 365 * 86400  # beyond a century is a typo, not a policy
_DATE_ONLY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(i?b?)")
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class PolicyError(ValueError):
    """An invalid policy option value; the message names the option."""


class _Linkish(Protocol):
    @property
    def upload_time(self) -> str | None: ...


L = TypeVar("L", bound=_Linkish)


@dataclass(frozen=True, slots=True)
class Cooldown:
    """The effective cooldown of one mirror index (None from cooldown_of: no policy)."""

    min_age: int  # seconds, 0 = none
    exclude_newer: float | None  # POSIX time of the cut-off
    allow_unknown: bool
    exempt: frozenset[str]
    min_age_text: str = ""
    exclude_newer_text: str = ""


# -- option values ------------------------------------------------------------------------------


def parse_duration(value: object) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``1w``, combinations (``1d12h``) or plain seconds."""
    if isinstance(value, bool):
        raise PolicyError(_duration_error(value))
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.isdigit():
            seconds = int(text)
        elif _DURATION_RE.fullmatch(text):
            seconds = sum(int(n) * _UNITS[u] for n, u in _PART_RE.findall(text))
        else:
            raise PolicyError(_duration_error(value))
    else:
        raise PolicyError(_duration_error(value))
    if seconds < 0 or seconds > _MAX_DURATION:
        raise PolicyError(_duration_error(value))
    return seconds


def _duration_error(value: object) -> str:
    return (
        f"'{MIN_AGE}' option must be a duration such as 7d, 12h, 30m, 45s or a number of "
        f"seconds (at most 100 years), got {value!r}"
    )


def parse_cutoff(value: object) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time; without a zone it is UTC."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(_cutoff_error(value))
    text = value.strip()
    try:
        if _DATE_ONLY_RE.match(text):
            dt = datetime.fromisoformat(text + "T00:00:00")
        else:
            dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise PolicyError(_cutoff_error(value)) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _cutoff_error(value: object) -> str:
    return (
        f"'{EXCLUDE_NEWER}' option must be an ISO 8601 date or date-time such as 2026-01-31 "
        f"or 2026-01-31T12:00:00Z, got {value!r}"
    )


def parse_size(value: object, option: str = MAX_BYTES) -> int:
    """Bytes from ``500M``, ``10G``, ``1.5GB``, ``4GiB``, ``512k`` or a plain number, in
    powers of 1024 like ``--max-upload-size``; 0 means no bound."""
    if isinstance(value, bool):
        raise PolicyError(_size_error(value, option))
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip().lower().replace(" ", ""))
        if not m or (m.group(3) and m.group(3) != "b" and not m.group(2)) or m.group(3) == "i":
            raise PolicyError(_size_error(value, option))
        number, unit = m.group(1), m.group(2)
        size = int(float(number) * 1024 ** _SIZE_UNITS[unit])
    else:
        raise PolicyError(_size_error(value, option))
    if size < 0:
        raise PolicyError(_size_error(value, option))
    return size


def _size_error(value: object, option: str) -> str:
    return (
        f"'{option}' option must be a size such as 500M, 10G, 4GiB or a number of bytes "
        f"(0: no bound), got {value!r}"
    )


def format_time(timestamp: float) -> str:
    """PEP 700's form: ISO 8601 in UTC with a ``Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def coerce_policy_value(key: str, value: Any) -> Any:
    """The stored form of a policy option (raises PolicyError naming the option)."""
    if key == MIN_AGE:
        parse_duration(value)
        return str(value).strip().lower().replace(" ", "")
    if key == MAX_BYTES:
        return parse_size(value)
    if key == EXCLUDE_NEWER:
        return format_time(parse_cutoff(value).timestamp())
    if key == UNKNOWN:
        if not isinstance(value, str) or value.strip().lower() not in ("allow", "deny"):
            raise PolicyError(f"'{UNKNOWN}' option must be 'allow' or 'deny', got {value!r}")
        return value.strip().lower()
    raise KeyError(key)  # EXEMPT is a list key, coerced with the other lists


# -- the policy ---------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _cooldown(
    min_age: object, exclude_newer: object, unknown: object, exempt: tuple[str, ...]
) -> Cooldown | None:
    try:
        seconds = parse_duration(min_age) if min_age not in (None, "") else 0
        cutoff = (
            parse_cutoff(exclude_newer).timestamp() if exclude_newer not in (None, "") else None
        )
    except PolicyError:
        return None  # stored values were validated; never fail a page on an old record
    if not seconds and cutoff is None:
        return None
    return Cooldown(
        min_age=seconds,
        exclude_newer=cutoff,
        allow_unknown=unknown == "allow",
        exempt=frozenset(exempt),
        min_age_text=str(min_age or ""),
        exclude_newer_text=format_time(cutoff) if cutoff is not None else "",
    )


def cooldown_of(config: Mapping[str, Any]) -> Cooldown | None:
    """The cooldown a mirror index config asks for, or None (the common, free case)."""
    min_age, cutoff = config.get(MIN_AGE), config.get(EXCLUDE_NEWER)
    if not min_age and not cutoff:
        return None
    exempt = config.get(EXEMPT) or ()
    return _cooldown(
        min_age if isinstance(min_age, str | int) else None,
        cutoff if isinstance(cutoff, str) else None,
        config.get(UNKNOWN),
        tuple(x for x in exempt if isinstance(x, str)),
    )


@lru_cache(maxsize=65536)
def parse_upload_time(value: str | None) -> float | None:
    """POSIX time of a PEP 700 ``upload-time`` (ISO 8601), or None if absent or unparsable."""
    if not value or not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def available_at(cooldown: Cooldown, project: str, upload_time: str | None) -> float:
    """When a file becomes available: 0 (now and always), a POSIX time, or inf (never)."""
    if project in cooldown.exempt:
        return 0.0
    uploaded = parse_upload_time(upload_time)
    if uploaded is None:
        return 0.0 if cooldown.allow_unknown else math.inf
    if cooldown.exclude_newer is not None and uploaded > cooldown.exclude_newer:
        return math.inf
    return uploaded + cooldown.min_age if cooldown.min_age else 0.0


def filter_links(
    cooldown: Cooldown, project: str, links: Sequence[L], now: float
) -> tuple[list[L], float | None]:
    """The links allowed at ``now``, and the next time that set grows (None: never)."""
    kept: list[L] = []
    next_change: float | None = None
    for link in links:
        at = available_at(cooldown, project, link.upload_time)
        if at <= now:
            kept.append(link)
        elif at != math.inf and (next_change is None or at < next_change):
            next_change = at
    return kept, next_change


def refusal_message(
    cooldown: Cooldown,
    stage: str,
    project: str,
    filename: str,
    upload_time: str | None,
    now: float,
) -> str | None:
    """Why ``filename`` is refused at ``now`` (None: it is allowed), naming policy and date."""
    at = available_at(cooldown, project, upload_time)
    if at <= now:
        return None
    uploaded = parse_upload_time(upload_time)
    if uploaded is None:
        return (
            f"{filename} is held back by the release cooldown of {stage}: the upstream gives "
            f"no upload-time for it and {UNKNOWN} is not 'allow'"
        )
    if at == math.inf:
        return (
            f"{filename} is refused by the {EXCLUDE_NEWER} policy of {stage}: uploaded "
            f"{format_time(uploaded)}, after the cut-off {cooldown.exclude_newer_text}"
        )
    return (
        f"{filename} is held back by the {MIN_AGE} policy of {stage} "
        f"({cooldown.min_age_text}): uploaded {format_time(uploaded)}, "
        f"available from {format_time(at)}"
    )


# -- glue for the file routes -------------------------------------------------------------------


def file_refusal(server: Any, stage: str, project: str, filename: str,
                 stored_upload_time: str | None = None) -> str | None:
    """Why a mirror file URL is refused now, or None; one dict lookup without a policy.

    The upload time comes from the cached file's record, else from the mirror's page.
    """
    from devpid.links import sro  # cached per config serial: no store read per request

    order = sro(server, stage)
    config = order[0][1] if order else None
    if not config or config.get("type") != "mirror":
        return None
    cooldown = cooldown_of(config)
    if cooldown is None:
        return None
    from devpid.domain import keys

    upload_time = stored_upload_time
    if upload_time is None:
        page = server.store.get(keys.mirror_page(stage, project)) or {}
        for entry in page.get("files", ()):
            if entry.get("filename") == filename:
                upload_time = entry.get("upload_time")
                break
    return refusal_message(cooldown, stage, project, filename, upload_time,
                           server.reactor.seconds())
