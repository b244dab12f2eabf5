"""Repairing valid paths whose files are damaged (for `runner verify --repair`).

A path with a known deriver is rebuilt by the worker in repair mode (its
corrupt inputs too); any other path (a source, a path fetched without its
`.drv`) can only be fetched again from a substituter. Either way the new
tree replaces the old one under the path's lock once it is complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from runner.build.derivation_goal import BuildMode
from runner.build.progress import make_progress
from runner.build.rebuild import is_corrupt
from runner.build.sandboxing import choose_sandbox
from runner.build.worker import Worker
from runner.settings import Settings
from runner.store.local_store import LocalStore
from runner.substituters.base import Warn
from runner.substituters.configure import open_substituters, print_warning
from runner.substituters.substitute import substitute


def repair_paths(store: LocalStore, paths: Iterable[str], settings: Settings, *,
                 warn: Warn = print_warning) -> list[str]:
    """Repair the given valid paths where corrupt; returns those still corrupt afterwards.

    Builds and substitutions obey `settings` (sandbox, substituters, …);
    progress goes to stderr. Do not hold the GC lock exclusively meanwhile.
    """
    corrupt = [p for p in dict.fromkeys(paths) if is_corrupt(store, p)]
    derivers: dict[str, str] = {}
    for path in corrupt:
        if drv := _deriver(store, path):
            derivers[path] = drv
    fetch_only = [p for p in corrupt if p not in derivers]
    if fetch_only:
        substituters = open_substituters(settings, warn=warn)
        for path in fetch_only:
            result = substitute(store, path, substituters, settings, warn=warn, repair=True)
            if not result.ok:
                warn(f"cannot repair '{path}': {result.describe()}")
    if derivers:
        progress = make_progress(log_lines=settings.number("log-lines"),
                                 print_build_logs=settings.flag("print-build-logs"))
        worker = Worker(store, settings, progress, lambda: choose_sandbox(settings, progress.warn),
                        mode=BuildMode.REPAIR)
        worker.run(sorted(set(derivers.values())))
    return [p for p in corrupt if is_corrupt(store, p)]


def _deriver(store: LocalStore, path: str) -> str | None:
    """A derivation that has `path` as an output and whose `.drv` file is still valid."""
    candidates = sorted(store.query_valid_derivers(path))
    deriver = store.query_deriver(path)
    if deriver is not None:
        candidates.insert(0, deriver)
    for drv in candidates:
        if store.is_valid(drv) and os.path.exists(drv) and not is_corrupt(store, drv):
            return drv
    return None

