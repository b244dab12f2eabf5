"""Store verification: the database agrees with itself and with the files on disk.

Checked with `gc.lock` held exclusively (nothing is added or collected
meanwhile): no reference or output row points at a missing path, every
valid path is a well-formed store path and exists. With `check_contents`,
each path's NAR hash is recomputed and compared (after the lock is
released, as that is slow; paths collected meanwhile are skipped).

With `repair`, dangling rows are deleted; broken paths are first handed to
`rebuild` (the CLI passes the worker's repair: rebuild from the deriver or
substitute again, in place). A broken path still broken after that is
garbage only when the collector would delete it too: not live (rooted, or
kept by a root through references or `keep` options) and referred to by no
valid path. Such a path is invalidated and its files removed; every other
one stays as it is and is reported as not repaired.
"""

from __future__ import annotations

import graphlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.errors import RunnerError
from runner.store import nar
from runner.store.canonicalise import remove_tree
from runner.store.gc import GCOptions, live_paths
from runner.store.local_store import LocalStore
from runner.store.optimise import links_dir
from runner.store.paths import parse_store_path
from runner.store.roots import all_roots, gc_lock, temp_root_label


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)  # found, in the order found
    fixed: list[str] = field(default_factory=list)  # what --repair did
    unfixed: list[str] = field(default_factory=list)  # what is still wrong afterwards
    broken: set[str] = field(default_factory=set)  # valid paths whose files or closure are bad
    bad_links: list[str] = field(default_factory=list)  # `.links` entries not matching their name

    @property
    def ok(self) -> bool:
        return not self.unfixed

    def to_json(self) -> dict[str, object]:
        """What `runner store verify --json` prints (the exit status says `ok` too)."""
        return {"ok": self.ok, "problems": self.problems, "fixed": self.fixed,
                "notFixed": self.unfixed, "brokenPaths": sorted(self.broken),
                "badLinks": self.bad_links}


Rebuild = Callable[[list[str]], object]  # repairs what it can of the given paths


def verify_store(store: LocalStore, *, check_contents: bool = False,
                 repair: bool = False, rebuild: Rebuild | None = None,
                 keep: GCOptions | None = None) -> VerifyReport:
    """`keep`: what the collector keeps alive (its keep options); repair never removes that."""
    report = VerifyReport()
    with gc_lock(store.state_dir, exclusive=True, notice=sys.stderr):
        _check_rows(store, report, repair)
        _check_paths(store, report)
    if check_contents:
        _check_contents(store, report)
        _check_links(store, report)
    if repair:
        if rebuild is not None:  # builds take the GC lock shared: not under ours
            _rebuild_broken(store, report, rebuild)
        with gc_lock(store.state_dir, exclusive=True, notice=sys.stderr):
            _repair_broken(store, report, GCOptions() if keep is None else keep)
            _repair_links(report)
    elif report.problems:
        report.unfixed = list(report.problems)
    return report


def _check_rows(store: LocalStore, report: VerifyReport, repair: bool) -> None:
    """Rows pointing at missing ValidPaths rows (possible only if foreign keys were off)."""
    db = store.db
    dangling_referrer = db.execute(
        "select rowid, referrer from Refs where referrer not in (select id from ValidPaths)"
    ).fetchall()
    for rowid, referrer in dangling_referrer:
        report.problems.append(f"reference row {rowid} belongs to a missing path (id {referrer})")
    for referrer, reference in db.execute(
            "select v.path, r.reference from Refs r join ValidPaths v on v.id = r.referrer"
            " where r.reference not in (select id from ValidPaths)"):
        report.problems.append(f"'{referrer}' refers to a missing path (id {reference})")
        report.broken.add(referrer)
    dangling_outputs = db.execute(
        "select rowid, drv from DerivationOutputs where drv not in (select id from ValidPaths)"
    ).fetchall()
    for rowid, drv in dangling_outputs:
        report.problems.append(f"output row {rowid} belongs to a missing derivation (id {drv})")
    if repair and (dangling_referrer or dangling_outputs):
        with db.transaction() as conn:
            conn.executemany("delete from Refs where rowid = ?",
                             [(rowid,) for rowid, _ in dangling_referrer])
            conn.executemany("delete from DerivationOutputs where rowid = ?",
                             [(rowid,) for rowid, _ in dangling_outputs])
        report.fixed.append(f"deleted {len(dangling_referrer) + len(dangling_outputs)} "
                            "dangling rows")


def _check_paths(store: LocalStore, report: VerifyReport) -> None:
    for (path,) in store.db.execute("select path from ValidPaths order by path").fetchall():
        try:
            parse_store_path(path, store.store_dir)
        except RunnerError as e:
            report.problems.append(f"invalid entry in the database: {e}")
            report.broken.add(path)
            continue
        if not os.path.lexists(path):
            report.problems.append(f"'{path}' is valid but missing on disk")
            report.broken.add(path)


def _check_contents(store: LocalStore, report: VerifyReport) -> None:
    rows = store.db.execute("select path from ValidPaths order by path").fetchall()
    for (path,) in rows:
        if path in report.broken:
            continue
        info = store.query_path_info(path)
        if info is None:
            continue  # collected meanwhile
        try:
            actual, size = nar.hash_path(path)
        except (OSError, RunnerError) as e:
            if store.is_valid(path):
                report.problems.append(f"cannot hash '{path}': {e}")
                report.broken.add(path)
            continue
        if actual != info.nar_hash:
            report.problems.append(f"'{path}' was modified: expected hash "
                                   f"'{info.nar_hash}', got '{actual}'")
            report.broken.add(path)
        elif info.nar_size and size != info.nar_size:
            report.problems.append(f"'{path}' has NAR size {size}, the database says "
                                   f"{info.nar_size}")
            report.broken.add(path)


def _check_links(store: LocalStore, report: VerifyReport) -> None:
    """Every `.links` entry is named after its own NAR hash; one that is not was modified
    in place, and `optimise` must never link a store file to it."""
    try:
        with os.scandir(links_dir(store.store_dir)) as entries:
            links = sorted(e.path for e in entries)
    except FileNotFoundError:
        return
    for link in links:
        problem = _link_problem(link)
        if problem is not None:
            report.problems.append(problem)
            report.bad_links.append(link)


def _link_problem(link: str) -> str | None:
    try:
        actual = nar.hash_path(link)[0].base32()
    except FileNotFoundError:
        return None  # collected meanwhile
    except (OSError, RunnerError) as e:
        return f"cannot hash the link '{link}': {e}"
    if actual != os.path.basename(link):
        return f"the link '{link}' was modified: its contents hash to '{actual}'"
    return None


def _repair_links(report: VerifyReport) -> None:
    """Drop corrupt `.links` entries (a store file sharing one is a broken path of its own)."""
    for link in report.bad_links:
        if _link_problem(link) is None:  # replaced by a good copy meanwhile (a repair)
            report.fixed.append(f"the link '{link}' holds the right contents again")
            continue
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        except OSError as e:
            report.unfixed.append(f"cannot remove the corrupted link '{link}': {e.strerror}")
            continue
        report.fixed.append(f"removed corrupted link '{link}'")


def _rebuild_broken(store: LocalStore, report: VerifyReport, rebuild: Rebuild) -> None:
    candidates = sorted(p for p in report.broken
                        if store.is_valid(p) and os.path.dirname(p) == store.store_dir)
    if not candidates:
        return
    rebuild(candidates)
    for path in candidates:
        if _healthy(store, path):
            report.fixed.append(f"repaired '{path}'")
            report.broken.discard(path)


def _healthy(store: LocalStore, path: str) -> bool:
    info = store.query_path_info(path)
    if info is None or not all(store.is_valid(r) for r in info.references):
        return False
    try:
        return nar.hash_path(path, info.nar_hash.algo)[0] == info.nar_hash
    except (OSError, RunnerError):
        return False


def _repair_broken(store: LocalStore, report: VerifyReport, keep: GCOptions) -> None:
    """Remove broken paths that are garbage anyway, referrers first; report the rest."""
    broken = {p for p in report.broken if store.is_valid(p)}
    if not broken:
        return
    # Our own temporary roots (paths the repair just tried) do not make a path live.
    mine = temp_root_label(os.getpid())
    roots = {p: s - {mine} for p, s in all_roots(store.store_dir, store.state_dir).items()}
    roots = {p: s for p, s in roots.items() if s}
    live = live_paths(store, roots, keep)
    referrers = {p: store.query_referrers(p) - {p} for p in broken}
    graph = {p: referrers[p] & broken for p in broken}
    removed: set[str] = set()
    for path in graphlib.TopologicalSorter(graph).static_order():
        users = sorted(referrers[path] - removed)
        if users:
            report.unfixed.append(f"'{path}' is broken but still referenced by '{users[0]}'; "
                                  "rebuild or substitute it (runner build --repair)")
            continue
        if path in live:
            why = (f"it is a GC root ({sorted(roots[path])[0]})" if path in roots
                   else "a GC root keeps it alive")
            report.unfixed.append(f"'{path}' is broken and could not be rebuilt or "
                                  f"substituted; it is kept because {why}")
            continue
        with store.db.transaction() as conn:
            conn.execute("delete from ValidPaths where path = ?", (path,))
        # A malformed row may name anything; only ever delete inside the store dir.
        if os.path.normpath(path) == path and os.path.dirname(path) == store.store_dir:
            try:
                remove_tree(path)
            except OSError as e:
                report.unfixed.append(f"invalidated '{path}' but cannot delete it: {e.strerror}")
        removed.add(path)
        report.fixed.append(f"removed broken path '{path}'")
