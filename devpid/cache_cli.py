"""``devpid cache``: list and prune cached mirror files (the server may keep running).

Only files of mirror indexes are listed or pruned, never private uploads. Pruning deletes
their records in one commit (a running server sees it like any other commit; pages keep
listing the files, which are fetched again on demand) and then the blobs nothing else names.
A file's age is how long ago it was cached (its blob's time), since the server keeps the
last-download times in memory only.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devpid.store.base import BlobStore, Store

HELP = "list or prune cached mirror files (by index, project, age; server may keep running)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    for name, text in (("list", "list cached mirror files with size and age"),
                       ("prune", "delete cached mirror files (fetched again on demand)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--serverdir",
                       help="server directory (default $DEVPID_SERVERDIR or ~/.devpid)")
        p.add_argument("--index", action="append", metavar="USER/INDEX",
                       help="only this mirror index (repeatable; default: all mirrors)")
        p.add_argument("--project", action="append", help="only this project (repeatable)")
        p.add_argument("--older-than", metavar="AGE",
                       help="only files cached longer ago than AGE (7d, 12h, 30m, ...)")
        if name == "prune":
            p.add_argument("--all", action="store_true",
                           help="allow pruning without --project or --older-than")
            p.add_argument("--dry-run", action="store_true",
                           help="only list what would be deleted")


def _select(store: Store, blobs: BlobStore, args: argparse.Namespace, now: float
            ) -> list[tuple[str, str, Any, float]]:
    """(stage, key, (sha, meta, size), cached at) of the matching mirror files."""
    from devpid.domain import keys
    from devpid.mirror.cache import record_ref, stage_of
    from devpid.mirror.policy import parse_duration
    from devpid.model.names import normalize_name

    mirrors = sorted(
        keys.stage_name(key) for key, value in store.items(keys.INDEXES)
        if isinstance(value, dict) and value.get("type") == "mirror"
    )
    if args.index:
        unknown = [i for i in args.index if i not in mirrors]
        if unknown:
            raise ValueError(f"not a mirror index: {', '.join(unknown)}")
        mirrors = [m for m in mirrors if m in args.index]
    projects = {normalize_name(p) for p in args.project or ()}
    max_age = parse_duration(args.older_than) if args.older_than else None
    found = []
    for stage in mirrors:
        for key, value in store.iter_items(keys.files_of_stage(stage)):
            ref = record_ref(value)
            if ref is None or (projects and keys.parse(key).project not in projects):
                continue
            try:
                info = blobs.info(ref[0])
            except OSError:
                info = None
            cached = 0.0 if info is None else info[1]
            if max_age is not None and now - cached < max_age:
                continue
            found.append((stage_of(key), key, ref, cached))
    return found


def _prune(store: Store, blobs: BlobStore, chosen: list[tuple[str, str, Any, float]]) -> int:
    """Delete the records (giving the URL paths back to the mirror pages), then the blobs."""
    from devpid.domain import keys
    from devpid.mirror.cache import record_ref, remove_blobs
    from devpid.store.sqlite import encode_value

    with store.transaction() as tx:
        pages = set()
        for stage, key, _ref, _cached in chosen:
            tx.delete(key)
            pages.add(keys.mirror_page(stage, keys.parse(key).project))
        for page_key in sorted(pages):
            page = store.get(page_key)
            if page is not None:
                tx.set_encoded(page_key, page, encode_value(page))
    live: set[str] = set()
    for _key, value in store.iter_items(keys.FILES):
        ref = record_ref(value)
        if ref is not None:
            live.update(d for d in ref[:2] if d)
    freed = 0
    for stage in sorted({c[0] for c in chosen}):
        refs = [c[2] for c in chosen if c[0] == stage]
        freed += remove_blobs(blobs, stage, refs, live.__contains__)
    return freed


def main(args: argparse.Namespace) -> int:
    from devpid.cli import _serverdir
    from devpid.mirror.policy import PolicyError
    from devpid.store import is_initialised, open_store
    from devpid.store.base import StoreError

    serverdir = _serverdir(args)
    if not is_initialised(serverdir):
        print(f"devpid: {serverdir} is not an initialised server directory", file=sys.stderr)
        return 1
    pruning = args.cache_command == "prune"
    if pruning and not (args.project or args.older_than or args.all):
        print("devpid: prune needs --project, --older-than or --all", file=sys.stderr)
        return 2
    # open_store: on PostgreSQL a prune is committed through the database, not to the view
    store, blobs = open_store(serverdir, readonly=not pruning or args.dry_run)
    now = time.time()
    try:
        chosen = _select(store, blobs, args, now)
        total = sum(c[2][2] for c in chosen)
        for stage, key, ref, cached in chosen:
            when = datetime.fromtimestamp(cached, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{stage}  {key.split('/', 4)[4]}  {ref[2]}  {when}")
        verb = "would prune" if pruning and args.dry_run else "pruned" if pruning else "cached"
        if pruning and not args.dry_run and chosen:
            _prune(store, blobs, chosen)
        print(f"devpid: cache: {verb} {len(chosen)} files, {total} bytes")
        return 0
    except (PolicyError, ValueError) as e:
        print(f"devpid: {e}", file=sys.stderr)
        return 2
    except (OSError, StoreError) as e:
        print(f"devpid: cache {args.cache_command} failed: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
