"""`runner log` when no log is stored here: the substituters' `log/<drv>`, as `nix log`
falls back to them (used by the local and the daemon client alike)."""

from __future__ import annotations

import sys

from runner.build.log_target import DeriverStore
from runner.errors import RunnerError
from runner.settings import Settings


def log_from_substituters(store: DeriverStore, settings: Settings, target: str,
                          name: str | None, missing: RunnerError) -> bytes:
    """No log here (nor in a daemon's store): the first substituter's `log/<drv>`, as
    `nix log` falls back to them; `missing` is raised when none has it."""
    from runner.build.log_target import derivation_candidates, store_path_of
    from runner.substituters.configure import open_substituters, print_warning
    from runner.substituters.log_fetch import Caches, deriver_from_caches, fetch_log

    caches = Caches(open_substituters(settings), print_warning)
    if not caches.caches:
        raise missing
    try:
        candidates = derivation_candidates(store, target, name)
    except RunnerError as e:  # an output we do not have: the caches may know its deriver
        path = store_path_of(store.store_dir, target)
        deriver = deriver_from_caches(caches, path) if path and e.reason == "no-log" else None
        if deriver is None:
            raise missing from None
        candidates = [deriver]
    for drv_path in candidates:
        found = fetch_log(caches, drv_path)
        if found is not None:
            print(f"got build log for '{drv_path}' from '{found[1]}'", file=sys.stderr)
            return found[0]
    raise missing
