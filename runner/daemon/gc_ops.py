"""Operations on GC roots and garbage collection."""

from __future__ import annotations

import os
from collections.abc import Callable

from runner.daemon.protocol import Op
from runner.daemon.session import Session
from runner.errors import RunnerError

UINT64_MAX = (1 << 64) - 1
# GC actions, as Nix numbers them.
GC_RETURN_LIVE, GC_RETURN_DEAD, GC_DELETE_DEAD, GC_DELETE_SPECIFIC = range(4)


def _add_temp_root(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    s.store.temp_roots.add_temp_root(s.path(text))
    s.stop_work()
    s.writer.u64(1)


def _add_indirect_root(s: Session) -> None:
    from runner.store.roots import add_indirect_root, gc_lock

    link = s.reader.text()
    s.start_work()
    if not os.path.isabs(link):
        raise RunnerError(f"indirect root '{link}' is not an absolute path", reason="bad-root")
    with gc_lock(s.store.state_dir, exclusive=False):
        add_indirect_root(s.store.state_dir, link)
    s.stop_work()
    s.writer.u64(1)


def _sync_with_gc(s: Session) -> None:
    s.start_work()
    s.stop_work()
    s.writer.u64(1)


def _find_roots(s: Session) -> None:
    from runner.store.roots import find_roots, gc_lock, read_temp_roots

    s.start_work()
    with gc_lock(s.store.state_dir, exclusive=True):
        roots = find_roots(s.store.store_dir, s.store.state_dir)
        temp = read_temp_roots(s.store.state_dir)
    s.stop_work()
    pairs = sorted((link, path) for path, links in roots.items() for link in links)
    for path, owners in temp.items():
        pairs.extend(("{temp}" if not s.peer.trusted else f"{{{o}}}", path)
                     for o in sorted(owners))
    s.writer.u64(len(pairs))
    for link, path in pairs:
        s.writer.text(link).text(path)


def _collect_garbage(s: Session) -> None:
    from runner.store.gc import GCOptions, collect_garbage, delete_paths

    action = s.reader.num(3, "GC action")
    texts = s.reader.texts()
    ignore_liveness = s.reader.flag()
    max_freed = s.reader.u64()
    for _ in range(3):
        s.reader.u64()  # obsolete fields
    s.start_work()
    if ignore_liveness:
        raise RunnerError("you are not allowed to ignore liveness", reason="not-trusted")
    if action in (GC_DELETE_DEAD, GC_DELETE_SPECIFIC):
        s.require_trust("delete store paths")
    if action == GC_DELETE_SPECIFIC:
        result = delete_paths(s.store, s.paths(texts))
        paths = [*result.deleted, *result.leftovers]
    else:
        limit = None if max_freed == UINT64_MAX else max_freed
        result = collect_garbage(s.store, GCOptions(
            dry_run=action != GC_DELETE_DEAD, max_freed=limit))
        paths = result.deleted
        if action == GC_RETURN_LIVE:
            rows = s.store.db.execute("select path from ValidPaths").fetchall()
            paths = sorted({row[0] for row in rows} - set(result.deleted))
    s.stop_work()
    s.writer.texts(paths).u64(result.bytes_freed).u64(0)


HANDLERS: dict[int, Callable[[Session], None]] = {
    Op.ADD_TEMP_ROOT: _add_temp_root,
    Op.ADD_INDIRECT_ROOT: _add_indirect_root,
    Op.SYNC_WITH_GC: _sync_with_gc,
    Op.FIND_ROOTS: _find_roots,
    Op.COLLECT_GARBAGE: _collect_garbage,
}
