"""Garbage collection: delete store paths no root can reach, and specific paths on request.

With `gc.lock` held exclusively (see `roots.py`), the collector reads every
root, computes the live set (the closure of the roots, plus derivers or
outputs with `keep_derivations` / `keep_outputs`) and deletes the rest,
referrers before their references. Each deletion is one small transaction
that drops the path's row (its reference rows go with it), followed by the
removal of its files. A crash between the two leaves an invalid leftover on
disk, which the next collection removes; the closure invariant holds after
every commit, because nothing still valid refers to a deleted path.
"""

from __future__ import annotations

import graphlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from runner.errors import RunnerError
from runner.store import check_roots
from runner.store.canonicalise import remove_tree
from runner.store.fdtree import disk_usage
from runner.store.layout import (
    LINKS_DIR,
    LOCK_SUFFIX,
    SANDBOX_STAGING_PREFIX,
    TEMP_DIR_PREFIX,
    TEMP_LINK_PREFIX,
)
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks, is_locked
from runner.store.paths import parse_store_path
from runner.store.roots import Roots, all_roots, gc_lock
from runner.store.staging import TempDir


@dataclass(frozen=True)
class GCOptions:
    dry_run: bool = False
    max_freed: int | None = None  # stop once this many bytes are freed
    keep_outputs: bool = False  # a live derivation keeps its outputs
    keep_derivations: bool = True  # a live output keeps its derivation (Nix's default)
    drop_failures: bool = False  # also forget cached build failures


@dataclass
class GCResult:
    deleted: list[str] = field(default_factory=list)  # valid paths, in deletion order
    leftovers: list[str] = field(default_factory=list)  # invalid store entries removed
    skipped: list[str] = field(default_factory=list)  # dead but busy (locked) or still referred
    bytes_freed: int = 0
    locks_removed: int = 0  # stale `.lock` files
    links_removed: int = 0  # `.links` entries no path shares any more
    failures_dropped: int = 0
    released_repositories: list[str] = field(default_factory=list)  # gone; check roots dropped

    def summary(self, dry_run: bool = False) -> str:
        count = f"{len(self.deleted)} store paths"
        if self.leftovers:
            count += f" and {len(self.leftovers)} invalid leftovers"
        if dry_run:
            return f"{count} would be deleted"
        mib = self.bytes_freed / (1024 * 1024)
        return f"{count} deleted, {mib:.2f} MiB freed"

    def to_json(self, dry_run: bool = False) -> dict[str, object]:
        """What `runner gc --json` prints."""
        return {"dryRun": dry_run, "deleted": self.deleted, "leftovers": self.leftovers,
                "skipped": self.skipped, "bytesFreed": self.bytes_freed,
                "lockFilesRemoved": self.locks_removed, "linksRemoved": self.links_removed,
                "failuresDropped": self.failures_dropped,
                "checkRootsReleased": self.released_repositories}


# ------------------------------------------------------------------ liveness


@dataclass
class _Graph:
    """The reference graph of all valid paths, loaded in a few queries."""

    references: dict[str, set[str]]
    referrers: dict[str, set[str]]
    outputs: dict[str, set[str]]  # derivation -> its valid outputs
    derivers: dict[str, set[str]]  # output -> valid derivations listing it as their deriver

    @classmethod
    def load(cls, store: LocalStore) -> _Graph:
        db = store.db
        paths = {id_: path for id_, path in db.execute("select id, path from ValidPaths")}
        references: dict[str, set[str]] = {p: set() for p in paths.values()}
        referrers: dict[str, set[str]] = {p: set() for p in paths.values()}
        for referrer, reference in db.execute("select referrer, reference from Refs"):
            if referrer in paths and reference in paths:
                references[paths[referrer]].add(paths[reference])
                referrers[paths[reference]].add(paths[referrer])
        outputs: dict[str, set[str]] = {}
        derivers: dict[str, set[str]] = {}
        deriver_of = dict(db.execute("select path, deriver from ValidPaths"))
        for drv_id, out in db.execute("select drv, path from DerivationOutputs"):
            drv = paths.get(drv_id)
            if drv is None or out not in references:
                continue
            outputs.setdefault(drv, set()).add(out)
            if deriver_of.get(out) == drv:
                derivers.setdefault(out, set()).add(drv)
        return cls(references, referrers, outputs, derivers)

    def live(self, roots: Iterable[str], keep_outputs: bool, keep_derivations: bool) -> set[str]:
        alive: set[str] = set()
        stack = [r for r in roots if r in self.references]
        while stack:
            path = stack.pop()
            if path in alive:
                continue
            alive.add(path)
            stack.extend(self.references[path])
            if keep_outputs:
                stack.extend(self.outputs.get(path, ()))
            if keep_derivations:
                stack.extend(self.derivers.get(path, ()))
        return alive

    def referrers_first(self, paths: set[str]) -> list[str]:
        """`paths` ordered so that every path comes after the paths referring to it."""
        graph = {p: {r for r in self.referrers[p] if r in paths and r != p} for p in paths}
        return list(graphlib.TopologicalSorter(graph).static_order())


def live_paths(store: LocalStore, roots: Roots, options: GCOptions) -> set[str]:
    """The valid paths a collection with `options` would keep; call under the GC lock."""
    return _Graph.load(store).live(roots, options.keep_outputs, options.keep_derivations)


# ------------------------------------------------------------------ collecting


def collect_garbage(store: LocalStore, options: GCOptions = GCOptions()) -> GCResult:
    """Delete every store path that no root keeps alive (or, with `dry_run`, list them).

    A dry run walks the same steps without acting, so it lists exactly what the
    real run would delete (locks, roots and validity as they are now)."""
    result = GCResult()
    act = not options.dry_run
    with gc_lock(store.state_dir, exclusive=True, notice=sys.stderr):
        roots = _release_gone_repositories(store, all_roots(store.store_dir, store.state_dir),
                                           result, act)
        graph = _Graph.load(store)
        alive = graph.live(roots, options.keep_outputs, options.keep_derivations)
        dead = graph.referrers_first(set(graph.references) - alive)
        # Invalid leftovers first: unlike dead valid paths, nothing can revive them.
        _remove_leftovers(store, roots, result, act)
        gone: set[str] = set()
        for path in dead:
            if _limit_reached(result, options):
                break
            if act:
                _delete_valid(store, path, result)
            else:
                _would_delete(store, path, result, graph, gone)
        if act:
            _remove_unused_links(store.store_dir, result)
            if options.drop_failures:
                result.failures_dropped = store.clear_failures()
    return result


def _release_gone_repositories(store: LocalStore, roots: Roots, result: GCResult,
                               act: bool) -> Roots:
    """Drop the check roots of repositories whose dir is gone (a dry run only says so)."""
    gone = check_roots.gone_repositories(store.state_dir)
    if not gone:
        return roots
    prefixes = tuple(top + os.sep for top, _ in gone)
    kept: Roots = {}
    for path, sources in roots.items():
        left = {s for s in sources if not s.startswith(prefixes)}
        if left:
            kept[path] = left
    for top, repository in gone:
        result.released_repositories.append(repository)
        if act:
            check_roots.release(top)
    return kept


def _limit_reached(result: GCResult, options: GCOptions) -> bool:
    return options.max_freed is not None and result.bytes_freed >= options.max_freed


def _foreign(store: LocalStore, path: str, result: GCResult) -> bool:
    """A row that names no path of this store: never delete files for it."""
    try:
        parse_store_path(path, store.store_dir)
    except RunnerError:
        result.skipped.append(path)
        return True
    return False


def _would_delete(store: LocalStore, path: str, result: GCResult, graph: _Graph,
                  gone: set[str]) -> None:
    """`_delete_valid` for a dry run: the same decision, as if `gone` were deleted."""
    if _foreign(store, path, result):
        return
    if is_locked(path) or graph.referrers[path] - gone - {path}:
        result.skipped.append(path)
        return
    result.bytes_freed += disk_usage(path)
    result.deleted.append(path)
    gone.add(path)


def _delete_valid(store: LocalStore, path: str, result: GCResult) -> bool:
    """Invalidate then remove one path; False (and nothing done) when it is busy or in use."""
    if _foreign(store, path, result):
        return False
    locks = PathLocks()
    if not locks.try_lock([path]):
        result.skipped.append(path)  # someone is adding or building it right now
        return False
    try:
        with store.db.transaction() as conn:
            row = conn.execute("select id from ValidPaths where path = ?", (path,)).fetchone()
            if row is None:
                return False
            users = conn.execute("select 1 from Refs where reference = ? and referrer != ?"
                                 " limit 1", (row[0], row[0])).fetchone()
            if users is not None:
                # A referrer was kept (busy): keep this one too, or the closure breaks.
                result.skipped.append(path)
                return False
            conn.execute("delete from ValidPaths where id = ?", (row[0],))
        result.bytes_freed += _remove(path)
        result.deleted.append(path)
        return True
    finally:
        locks.unlock()


def _remove_leftovers(store: LocalStore, roots: Roots, result: GCResult, act: bool) -> None:
    """Remove store entries that are not valid: interrupted adds, builds, stale lock files.
    Every entry removed is listed in `result` (lock files are counted)."""
    store_dir = store.store_dir
    for name in sorted(os.listdir(store_dir)):
        path = os.path.join(store_dir, name)
        if name.startswith(TEMP_LINK_PREFIX):
            # Optimising holds the GC lock shared, so no link is in flight now.
            _leftover(path, result, act)
        elif name.startswith(TEMP_DIR_PREFIX):
            if TempDir.is_abandoned(path):  # its adder died
                _leftover(path, result, act)
        elif name.startswith(SANDBOX_STAGING_PREFIX):
            # A sandboxed build's staging dir; its build holds the output's lock.
            _remove_unlocked(os.path.join(store_dir, name[len(SANDBOX_STAGING_PREFIX):]),
                             path, result, act)
        elif name.startswith("."):
            continue  # the links dir, the state-dir marker
        elif path in roots or store.is_valid(path):
            # A store path whose name merely ends like runner's own entries
            # (`<hash>-foo.lock` is a path, not the lock of `<hash>-foo`).
            continue
        elif name.endswith(LOCK_SUFFIX) and not is_locked(path):
            # Unheld, it is stale whatever its path is (rooted, valid or gone), as
            # Nix's collector deems it; a held one belongs to a build or add in progress.
            owner = path[: -len(LOCK_SUFFIX)]
            if not act:
                result.locks_removed += not is_locked(owner)
                continue
            locks = PathLocks()
            if locks.try_lock([owner]):
                locks.unlock()  # unlocking deletes it
                result.locks_removed += 1
        elif path not in roots and not store.is_valid(path):
            _remove_unlocked(path, path, result, act, unless_valid=store)


def _leftover(path: str, result: GCResult, act: bool) -> None:
    result.bytes_freed += _remove(path) if act else disk_usage(path)
    result.leftovers.append(path)


def _remove_unlocked(owner: str, path: str, result: GCResult, act: bool,
                     unless_valid: LocalStore | None = None) -> None:
    """Remove the leftover `path` unless `owner` is locked (being built or added right now)."""
    if not act:
        if not is_locked(owner):
            _leftover(path, result, act)
        return
    locks = PathLocks()
    if not locks.try_lock([owner]):
        return
    try:
        if unless_valid is None or not unless_valid.is_valid(path):
            _leftover(path, result, act)
    finally:
        locks.unlock()


def _remove_unused_links(store_dir: str, result: GCResult) -> None:
    """Drop files in the links dir that no store path shares any more."""
    links = os.path.join(store_dir, LINKS_DIR)
    try:
        entries = list(os.scandir(links))
    except FileNotFoundError:
        return
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if st.st_nlink == 1:
            result.bytes_freed += st.st_blocks * 512
            result.links_removed += 1
            os.unlink(entry.path)


def _remove(path: str) -> int:
    """Delete a tree; returns the disk space freed (files still linked elsewhere free nothing)."""
    try:
        return remove_tree(path)  # by descriptors: any depth (docs/security.md, class 5)
    except OSError as e:
        raise RunnerError(f"cannot delete '{path}': {e.strerror}", reason="io") from None


# ------------------------------------------------------------------ deleting on request


def delete_paths(store: LocalStore, paths: Iterable[str]) -> GCResult:
    """Delete exactly `paths`; refuses (deleting nothing) any that is rooted or still referenced."""
    wanted = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    for path in wanted:
        parse_store_path(path, store.store_dir)
    result = GCResult()
    with gc_lock(store.state_dir, exclusive=True, notice=sys.stderr):
        roots = all_roots(store.store_dir, store.state_dir)
        graph = _Graph.load(store)
        valid = {p for p in wanted if p in graph.references}
        for path in wanted:
            _check_deletable(path, valid, roots, graph)
        for path in graph.referrers_first(valid):
            if not _delete_valid(store, path, result):
                raise RunnerError(f"cannot delete '{path}': it is locked by another process",
                                  reason="busy")
        for path in wanted:
            if path not in valid and os.path.lexists(path):
                result.bytes_freed += _remove(path)
                result.leftovers.append(path)
    return result


def _check_deletable(path: str, valid: set[str], roots: Roots, graph: _Graph) -> None:
    if path in roots:
        via = sorted(roots[path])[0]
        raise RunnerError(f"cannot delete '{path}': it is a GC root ({_describe(via)})",
                          reason="rooted")
    if path not in valid:
        if not os.path.lexists(path):
            raise RunnerError(f"cannot delete '{path}': it is not in the store",
                              reason="not-found")
        return
    users = sorted(graph.referrers[path] - valid - {path})
    if users:
        raise RunnerError(f"cannot delete '{path}': it is still referenced by '{users[0]}'",
                          reason="in-use")


def _describe(source: str) -> str:
    return source if source.startswith("temporary root") else f"via '{source}'"
