"""Content negotiation and client sniffing for the index views (pure functions, no Twisted).

Installers (pip, uv) ask for PEP 691 JSON via ``Accept``; browsers and old tools must keep
getting HTML. Headers come from arbitrary clients, so parsing never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = [
    "INSTALLER_UA",
    "SIMPLE_FORMATS",
    "SIMPLE_HTML",
    "SIMPLE_HTML_LATEST",
    "SIMPLE_JSON",
    "SIMPLE_JSON_LATEST",
    "TEXT_HTML",
    "VIEW_JSON",
    "best_match",
    "choose_simple_format",
    "choose_view",
    "is_installer",
    "parse_accept",
    "wants_json_api",
]

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"
SIMPLE_JSON_LATEST = "application/vnd.pypi.simple.latest+json"
SIMPLE_HTML_LATEST = "application/vnd.pypi.simple.latest+html"
TEXT_HTML = "text/html"

# The content types a simple page can be sent as.
SIMPLE_FORMATS: tuple[str, ...] = (SIMPLE_JSON, SIMPLE_HTML, TEXT_HTML)

# PEP 691 "latest" aliases resolve to the newest version we serve.
_LATEST_ALIASES: dict[str, str] = {
    SIMPLE_JSON_LATEST: SIMPLE_JSON,
    SIMPLE_HTML_LATEST: SIMPLE_HTML,
}

# On equal preference, HTML first: ``*/*`` and browsers must not get JSON.
_SIMPLE_OFFERS: tuple[str, ...] = (
    TEXT_HTML,
    SIMPLE_JSON,
    SIMPLE_HTML,
    SIMPLE_JSON_LATEST,
    SIMPLE_HTML_LATEST,
)

INSTALLER_UA = re.compile(r"([^ ]* )*(distribute|setuptools|pip|pex|uv)/.*")

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MAX_HEADER = 8192


def _media_type(value: str) -> str | None:
    """Lower-cased ``type/subtype`` without parameters, or None if malformed."""
    value = value.split(";", 1)[0].strip().lower()
    if value == "*":  # seen from old Java clients; means */*
        return "*/*"
    maintype, sep, subtype = value.partition("/")
    if not sep or not _TOKEN_RE.match(maintype) or not _TOKEN_RE.match(subtype):
        return None
    if maintype == "*" and subtype != "*":
        return None
    return f"{maintype}/{subtype}"


def _parse_q(params: list[str]) -> float | None:
    """The q weight from media-range parameters; None if it is malformed."""
    for param in params:
        key, sep, value = param.partition("=")
        if key.strip().lower() != "q":
            continue
        if not sep:
            return None
        try:
            q = float(value.strip().strip('"'))
        except ValueError:
            return None
        if not math.isfinite(q) or not 0.0 <= q <= 1.0:
            return None
        return q
    return 1.0


def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """Parse an Accept header into (media range, q) pairs in header order.

    Malformed elements (bad media range or bad q) are skipped, so a broken header
    degrades to "accept anything" rather than an error.
    """
    if not header:
        return []
    result: list[tuple[str, float]] = []
    for element in header[:_MAX_HEADER].split(","):
        if not element.strip():
            continue
        range_part, *params = element.split(";")
        media = _media_type(range_part)
        if media is None:
            continue
        q = _parse_q(params)
        if q is None:
            continue
        result.append((media, q))
    return result


def _quality(ranges: list[tuple[str, float]], offer: str) -> float:
    """q of ``offer`` per the most specific matching range (RFC 9110 12.5.1); 0 if none."""
    offer_type = _media_type(offer)
    if offer_type is None:
        return 0.0
    maintype = offer_type.split("/", 1)[0]
    best_specificity = -1
    best_q = 0.0
    for media, q in ranges:
        if media == offer_type:
            specificity = 2
        elif media == f"{maintype}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
        elif specificity == best_specificity:
            best_q = max(best_q, q)
    return best_q


def best_match(header: str | None, offers: Sequence[str]) -> str | None:
    """The offer the client prefers most, earlier offers winning ties; None if none is OK.

    A missing, empty or entirely unparseable header accepts the first offer.
    """
    if not offers:
        return None
    ranges = parse_accept(header)
    if not ranges:
        return offers[0]
    best: str | None = None
    best_q = 0.0
    for offer in offers:
        q = _quality(ranges, offer)
        if q > best_q:
            best, best_q = offer, q
    return best


def choose_simple_format(accept: str | None, format_param: str | None) -> str:
    """The content type to send a PEP 691 simple page as.

    A valid ``?format=`` wins over ``Accept``; anything unacceptable gets text/html
    (rather than 406) so odd clients still see a usable page.
    """
    if format_param:
        wanted = format_param.strip().lower()
        wanted = _LATEST_ALIASES.get(wanted, wanted)
        if wanted in SIMPLE_FORMATS:
            return wanted
    chosen = best_match(accept, _SIMPLE_OFFERS)
    if chosen is None:
        return TEXT_HTML
    return _LATEST_ALIASES.get(chosen, chosen)


VIEW_JSON = "application/json"


def choose_view(accept: str | None, extra: Sequence[str] = ()) -> str | None:
    """TEXT_HTML for a browser, VIEW_JSON for API clients, None for an unacceptable Accept.

    HTML only when the client prefers it over JSON and over the ``extra`` types the resource
    also serves (``*/*``, a missing header and devpi-client's ``application/json`` keep JSON,
    as before the web view existed); None (406) when none of them is acceptable. VIEW_JSON
    then means "not the web view": the resource's own negotiation decides.
    """
    ranges = parse_accept(accept)
    if not ranges:
        return VIEW_JSON
    q_html = _quality(ranges, TEXT_HTML)
    q_other = max([_quality(ranges, VIEW_JSON), *(_quality(ranges, o) for o in extra)])
    if q_html > q_other:
        return TEXT_HTML
    return VIEW_JSON if q_other > 0 else None


def wants_json_api(accept: str | None) -> bool:
    """True if the client asks for devpi's JSON API (``application/json`` in Accept)."""
    return any(media == "application/json" and q > 0 for media, q in parse_accept(accept))


def is_installer(user_agent: str | None) -> bool:
    """True for installer user agents (pip, uv, setuptools...), which get lean responses."""
    return bool(user_agent) and INSTALLER_UA.match(user_agent or "") is not None
