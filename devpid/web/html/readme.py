"""Long descriptions rendered for people: readme-renderer (PyPI's renderer and sanitiser).

Rendering runs in the worker pool (docutils on a big README takes a while) and the result is
kept per release, valid while the serial of the release record is unchanged.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

from devpid.web.html.markup import Safe, e

CACHE_SIZE = 512
MAX_DESCRIPTION = 2 * 1024 * 1024  # longer texts are shown as plain text, not parsed


def render_description(text: str, content_type: str | None) -> Safe:
    """Sanitised HTML for a description of the given ``Description-Content-Type``."""
    import readme_renderer.markdown
    import readme_renderer.rst
    import readme_renderer.txt

    if len(text) > MAX_DESCRIPTION:
        return Safe(f"<pre>{e(text)}</pre>")
    kind, _, params = (content_type or "text/x-rst").partition(";")
    kind = kind.strip().lower()
    rendered: str | None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "text/markdown":
            variant = "GFM"
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "variant" and value.strip():
                    variant = value.strip()
            rendered = readme_renderer.markdown.render(text, variant=variant)
        elif kind == "text/plain":
            rendered = readme_renderer.txt.render(text)
        else:
            rendered = readme_renderer.rst.render(text)
    if rendered is None:  # invalid markup: show the text rather than nothing
        rendered = readme_renderer.txt.render(text)
    return Safe(rendered or "")


class DescriptionCache:
    """(stage, project, version) -> (serial of the release record, rendered HTML)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, str, str], tuple[int, Safe]] = OrderedDict()

    async def get(self, server: Any, stage: str, project: str, version: str,
                  meta: dict[str, Any], serial: int) -> Safe:
        key = (stage, project, version)
        hit = self.entries.get(key)
        if hit is not None and hit[0] == serial:
            self.entries.move_to_end(key)
            return hit[1]
        text = meta.get("description")
        if not isinstance(text, str) or not text.strip():
            return Safe("")
        content_type = meta.get("description_content_type")
        rendered = await server.in_thread(
            render_description, text, content_type if isinstance(content_type, str) else None)
        self.entries[key] = (serial, rendered)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return rendered


