"""`--check` and `--repair` once the builder succeeded at scratch paths: compare the new
outputs with the valid ones, or put them in place of corrupt ones.

Called with the derivation's output locks held.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from runner.build.redirect import Redirect, differences
from runner.errors import RunnerError
from runner.store import nar
from runner.store.canonicalise import remove_tree, rename_tree
from runner.store.layout import CHECK_SUFFIX
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.store.staging import TempDir, replace_tree


def check_outputs(store: LocalStore, infos: list[PathInfo], redirect: Redirect, *,
                  keep: bool) -> list[str]:
    """One message per output whose rebuild differs from the valid path (none: the build
    is reproducible). With `keep`, a differing result is left at `<output>.check`."""
    problems: list[str] = []
    real_of = redirect.real
    for info in infos:
        real = real_of[info.path]
        with TempDir(store.store_dir) as tmp:
            staged = os.path.join(tmp.path, "x")
            redirect.copy_back(info.path, staged)
            remove_tree(info.path)
            nar_hash, _ = nar.hash_path(staged)
            valid = store.query_path_info(real)
            if valid is None or valid.nar_hash == nar_hash:
                continue
            files = differences(real, staged)
            message = f"output '{real}' differs"
            if files and files != ["."]:  # "." alone: a file output as a whole
                message += " in: " + ", ".join(files)
            if keep:
                kept = real + CHECK_SUFFIX
                remove_tree(kept)
                rename_tree(staged, kept)
                message += f"; the new result is kept at '{kept}'"
            problems.append(message)
    return problems


def repair_outputs(store: LocalStore, drv_path: str, infos: list[PathInfo],
                   redirect: Redirect, corrupt: set[str]) -> None:
    """Put rebuilt outputs in place of the `corrupt` valid ones (healthy valid outputs
    stay as they are) and register them with outputs built in place, in one transaction."""
    real_of = redirect.real
    register: list[PathInfo] = []
    for info in infos:
        refs = redirect.references(info.references)
        real = real_of.get(info.path)
        if real is None:  # was not valid: built in place
            register.append(PathInfo(info.path, info.nar_hash, info.nar_size, refs,
                                     drv_path, ca=info.ca))
            continue
        if real in corrupt:
            with TempDir(store.store_dir) as tmp:
                staged = os.path.join(tmp.path, "x")
                redirect.copy_back(info.path, staged)
                nar_hash, nar_size = nar.hash_path(staged)
                replace_tree(staged, real)
            register.append(PathInfo(real, nar_hash, nar_size, refs, drv_path, ca=info.ca))
        remove_tree(info.path)
    store.register_valid_paths(register)


def is_corrupt(store: LocalStore, path: str) -> bool:
    """A valid path whose files no longer have the registered NAR hash (or are gone)."""
    info = store.query_path_info(path)
    if info is None:
        return False
    if not os.path.lexists(path):
        return True
    try:
        return nar.hash_path(path, info.nar_hash.algo)[0] != info.nar_hash
    except (OSError, RunnerError):
        return True


def corrupt_in_closure(store: LocalStore, outputs: Iterable[str]) -> list[str]:
    """The corrupt paths that `outputs` refer to, directly or not (not `outputs` themselves)."""
    own = set(outputs)
    return sorted(p for p in store.compute_closure(own) - own if is_corrupt(store, p))


def producers(store: LocalStore, drv_path: str) -> dict[str, str]:
    """Output path -> the derivation that produces it, for every derivation that
    `drv_path` depends on (its closure of `.drv` files, as Nix's repairClosure maps them)."""
    found: dict[str, str] = {}
    for path in store.compute_closure([drv_path]) - {drv_path}:
        if path.endswith(".drv"):
            for out in store.query_derivation_outputs(path).values():
                found[out] = path
    return found

