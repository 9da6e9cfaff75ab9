"""The domain owns keys and served paths: nothing else in devpid spells them.

A scan of every module's syntax tree (not a grep: docstrings, comments and route patterns are
allowed to *describe* the layout) fails naming ``file:line`` when code outside
``devpid/domain`` builds a store key or a ``+f``/``+e`` path by hand: an f-string or ``+``
concatenation that starts with a key kind (``f"file/{stage}/..."``, ``"index/" + stage``), a
bare key prefix or key literal (``"user/"``, ``"user/root"``), or an f-string/concatenation
that contains ``+f/``, ``+e/``, ``+doc/`` or ``/+docs``. Such code goes through
``devpid.domain.keys`` / ``paths``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from devpid.domain import keys

ROOT = Path(__file__).resolve().parent.parent / "devpid"
ALLOWED = {
    ROOT / "domain",  # the owner
    ROOT / "store" / "keys.py",  # the re-export kept for old imports
}
KEY_START = re.compile(rf"^({'|'.join(sorted(keys.SHAPES))})/")
PATH_AREA = re.compile(r"(^|/)\+(f|e|doc)/|/\+docs\b")


def _modules() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        if not any(path == a or a in path.parents for a in ALLOWED):
            yield path


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _leading_text(node: ast.expr) -> str | None:
    """The literal text an f-string or ``+`` chain starts with, if it starts with one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_text(node.left)
    return None


def _literal_parts(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [p for v in node.values for p in _literal_parts(v)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return []


def violations(source: str, name: str) -> list[str]:
    """What in ``source`` builds a key or a served path by hand, as ``name:line: why``."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    inside: set[int] = set()  # parts of an f-string or + chain already judged as a whole
    found = []
    for node in ast.walk(tree):
        if id(node) in inside or id(node) in docstrings:
            continue
        built = isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
            and bool(_literal_parts(node)))
        plain = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if not (built or plain):
            continue
        assert isinstance(node, ast.expr)
        if built:
            inside.update(id(n) for n in ast.walk(node) if n is not node)
        lead = _leading_text(node) or ""
        # A plain sentence that happens to start with "index/" is prose, not a key.
        if KEY_START.match(lead) and (built or " " not in lead):
            found.append(f"{name}:{node.lineno}: store key {lead!r}... spelled outside "
                         "devpid.domain.keys")
        elif built and any(PATH_AREA.search(p) for p in _literal_parts(node)):
            found.append(f"{name}:{node.lineno}: served +f/+e path built outside "
                         "devpid.domain.paths")
    return sorted(found, key=lambda v: int(v.split(":")[1]))


def test_no_key_or_path_literals_outside_the_domain() -> None:
    found = [v for path in _modules()
             for v in violations(path.read_text(encoding="utf-8"),
                                 str(path.relative_to(ROOT.parent)))]
    assert not found, "\n".join(found)


def test_the_scan_sees_what_it_must() -> None:
    """The scan itself: each hand-written form is caught, descriptions are not."""
    bad = {
        'k = f"file/{stage}/{p}/{fn}"': "store key",
        'k = "index/" + stage': "store key",
        'store.items("user/")': "store key",
        'x = key.startswith(("file/", "index/"))': "store key",
        'k = "user/root"': "store key",
        'p = f"{stage}/+f/{sha[:3]}/{sha[3:16]}/{fn}"': "+f/+e path",
        'p = f"+e/{rest}"': "+f/+e path",
        'p = stage + "/+f/" + rest': "+f/+e path",
        'u = f"{base}/{stage}/{p}/{v}/+doc/"': "+f/+e path",
    }
    for source, why in bad.items():
        found = violations(source, "m.py")
        assert found and why in found[0], (source, found)
    good = [
        '"""Files live at ``{stage}/+f/...`` (``file/{stage}/{p}/{fn}``)."""',
        '@app.route("/<user>/<index>/+f/<path:rest>")\ndef f(): pass',
        'raise E("targetindex not in format user/index")',
        'msg = f"user {name!r} may not upload"',
        'k = keys.file(stage, p, fn)',
        'x = "index/ is where configs go"',
    ]
    for source in good:
        assert violations(source, "m.py") == [], source
