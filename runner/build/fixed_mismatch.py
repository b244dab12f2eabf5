"""After a fixed-output hash mismatch, keep what was fetched under the path its real hash
gives, as Nix 2.8 does: correcting the hash in the spec then needs no rebuild (the
corrected derivation's output is that path, already valid).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection

from runner.store import nar, references
from runner.store.canonicalise import remove_tree, rename_tree
from runner.store.derivation import Derivation
from runner.store.hashes import Hash, hash_file
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks
from runner.store.path_info import PathInfo
from runner.store.paths import hash_part, make_fixed_output_path, name_part


def keep_under_real_hash(store: LocalStore, drv_path: str, drv: Derivation,
                         input_closure: Collection[str]) -> str | None:
    """Move the (canonicalised) output of fixed-output `drv` to the path of its actual
    hash and register it there; the path, or None when it is not kept (not a regular
    file where flat hashing wants one, refers to store paths, or locked elsewhere)."""
    out = drv.outputs["out"]
    expected, recursive = out.fixed_hash()
    if not os.path.lexists(out.path):
        return None
    if recursive:
        h = hashlib.new(expected.algo)
        for chunk in nar.dump(out.path):
            h.update(chunk)
        got = Hash(expected.algo, h.digest())
    elif os.path.isfile(out.path) and not os.path.islink(out.path):
        got = hash_file(expected.algo, out.path)
    else:
        return None
    real = make_fixed_output_path(name_part(out.path), got, recursive, store.store_dir)
    if real == out.path:
        return None
    candidates = {hash_part(p) for p in (*input_closure, out.path)}
    if references.scan(out.path, candidates):
        return None  # a fixed output may not refer to store paths: nothing to keep
    locks = PathLocks()
    if not locks.try_lock([real]):
        return None  # another process is registering it
    try:
        if store.is_valid(real):
            return real
        if os.path.lexists(real):
            remove_tree(real)
        rename_tree(out.path, real)
        nar_hash, nar_size = nar.hash_path(real)
        mode = "r:" if recursive else ""
        store.register_valid_paths([PathInfo(
            path=real, nar_hash=nar_hash, nar_size=nar_size, deriver=drv_path,
            ca=f"fixed:{mode}{got.algo}:{got.base32()}")])
    finally:
        locks.unlock()
    return real
