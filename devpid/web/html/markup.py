"""HTML building blocks for the web view: escaping, the page frame, the one stylesheet.

Every value that comes from the store, the request or an upstream goes through ``e()`` (or
``link()``); only fragments built here, or the sanitised output of readme-renderer, are
marked ``Safe`` and inserted as they are. Pages carry a Content-Security-Policy that allows
no script at all, so a missed escape still cannot run code.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

import devpid

# No JavaScript anywhere; inline CSS only; images in rendered descriptions may be remote.
CSP = (
    b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; "
    b"frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)

CSS = """
:root{--fg:#1d2330;--muted:#5b6478;--line:#dde2ea;--bg:#f7f8fa;--accent:#2456a6;--warn:#9a3412}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{background:#17233b;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center;
flex-wrap:wrap}
header a.brand{color:#fff;font-weight:700;font-size:1.15rem;letter-spacing:.02em}
header form{margin-left:auto;display:flex;gap:.3rem}
header input{padding:.35rem .55rem;border-radius:4px;border:0;min-width:16rem}
button{padding:.35rem .8rem;border-radius:4px;border:1px solid var(--line);background:#fff;
cursor:pointer}
nav.crumbs{padding:.5rem 1.2rem;color:var(--muted);font-size:.9rem}
main{max-width:72rem;margin:0 auto;padding:.5rem 1.2rem 2rem}
h1{font-size:1.6rem;margin:.6rem 0}h2{font-size:1.2rem;margin:1.6rem 0 .5rem}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8rem 1rem;
margin:.6rem 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:.8rem}
.grid>*{min-width:0}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);
vertical-align:top}
th{background:#eef1f6;font-weight:600;font-size:.9rem}
td.num{text-align:right;white-space:nowrap}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
pre{background:#f1f3f7;border:1px solid var(--line);border-radius:4px;padding:.6rem;
overflow-x:auto}
.muted{color:var(--muted)}.small{font-size:.85rem}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;
background:#e6ebf3;color:#2c3a55;margin-right:.25rem}
.ok{background:#dcfce7;color:#14532d}.bad{background:#fee2e2;color:#7f1d1d}
.warn{background:#ffedd5;color:var(--warn)}
.yanked{color:var(--warn)}
.hash{word-break:break-all}
.description{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.4rem 1.2rem}
.description img{max-width:100%}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:1rem}
"""


class Safe(str):
    """A fragment of HTML that is already escaped (built here or sanitised)."""


def e(value: Any) -> Safe:
    """Escape any value for HTML text and (double-quoted) attribute values."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[str]) -> Safe:
    return Safe("".join(parts))


def link(href: str, text: Any, **attrs: str) -> Safe:
    extra = "".join(f' {k.rstrip("_")}="{e(v)}"' for k, v in attrs.items())
    return Safe(f'<a href="{e(href)}"{extra}>{e(text)}</a>')


def external_link(url: Any, text: Any = None) -> Safe:
    """A link to a URL from metadata: only http(s) becomes a link, anything else is text."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return link(url, text if text is not None else url, rel="nofollow noopener")
    return e(url if text is None else f"{text}: {url}")


def badge(text: Any, kind: str = "") -> Safe:
    return Safe(f'<span class="badge {e(kind)}">{e(text)}</span>')


def size(n: Any) -> str:
    if not isinstance(n, int):
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def when(timestamp: Any) -> str:
    """A UTC time for people from an epoch number or an RFC 3339 string."""
    if isinstance(timestamp, int | float):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
    if isinstance(timestamp, str) and len(timestamp) >= 16:
        return timestamp[:10] + " " + timestamp[11:16] + " UTC"
    return "" if timestamp is None else str(timestamp)


def table(headers: list[str], rows: list[list[Any]], *, numeric: Iterable[int] = ()) -> Safe:
    nums = set(numeric)
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{e(cell)}</td>' if i in nums else f"<td>{e(cell)}</td>"
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return Safe(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def kv(pairs: list[tuple[str, Any]]) -> Safe:
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in pairs if v not in (None, ""))
    return Safe(f'<dl class="kv">{items}</dl>')


def page(base: str, title: str, body: str, *, crumbs: Sequence[tuple[str, str]] = (),
         query: str = "", serial: int | None = None) -> bytes:
    """The whole document: header with search, breadcrumbs, ``body`` (already Safe)."""
    trail = " / ".join(link(href, text) for href, text in crumbs)
    nav = f'<nav class="crumbs">{trail}</nav>' if crumbs else ""
    foot = f"devpid {e(devpid.__version__)}"
    if serial is not None:
        foot += f" · serial {e(serial)}"
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · devpid</title><style>{CSS}</style></head><body>"
        f'<header><a class="brand" href="{e(base)}/">devpid</a>'
        f'<form action="{e(base)}/+search" method="get" role="search">'
        f'<input name="q" type="search" placeholder="Search projects" aria-label="Search projects"'
        f' value="{e(query)}"><button type="submit">Search</button></form></header>'
        f"{nav}<main>{body}</main><footer>{foot}</footer></body></html>\n"
    )
    return doc.encode("utf-8")


def send(request: Any, body: bytes, code: int = 200) -> bytes:
    """Headers every page carries (type, CSP, no sniffing, per-Accept caching)."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Security-Policy", CSP)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Vary", b"Accept, User-Agent")
    request.setHeader(b"Cache-Control", b"no-cache")
    return body
