"""After a builder exits 0: check its outputs and describe them for registration.

Every declared output must exist; each is canonicalised, NAR-hashed and
scanned for references to the input closure and to the derivation's own
outputs; fixed-output hashes and the reference constraints of the
derivation (allowedReferences & co.) are enforced. Nothing is registered
here: the caller registers all outputs in one transaction.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Mapping

from runner.build.result import Status
from runner.errors import RunnerError
from runner.store import nar, references
from runner.store.canonicalise import canonicalise
from runner.store.derivation import Derivation, DerivationOutput
from runner.store.hashes import Hash, hash_file
from runner.store.path_info import PathInfo
from runner.store.paths import hash_part

# `closure_of(paths)`: the closure of valid paths, from the store.
ClosureFn = Callable[[Collection[str]], set[str]]

PATH_MAX = 4096  # Linux's, with the terminating NUL

REFERENCE_CHECKS = ("allowedReferences", "disallowedReferences", "allowedRequisites",
                    "disallowedRequisites")


class OutputRejected(Exception):
    """The build ran but its outputs are not acceptable (a permanent failure unless
    the status says otherwise)."""

    def __init__(self, message: str, status: Status = Status.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def collect_outputs(
    drv_path: str, drv: Derivation, input_closure: Collection[str],
    closure_of: ClosureFn,
) -> list[PathInfo]:
    """PathInfos for every output of `drv`, or OutputRejected."""
    own = {name: out.path for name, out in drv.outputs.items()}
    candidates = {hash_part(p): p for p in (*input_closure, *own.values())}
    infos: dict[str, PathInfo] = {}
    for name, out in drv.outputs.items():
        path = out.path
        if not os.path.lexists(path):
            raise OutputRejected(
                f"builder for '{drv_path}' failed to produce output path for output "
                f"'{name}' at '{path}'")
        try:
            # Paths beyond PATH_MAX could not be archived or used by name.
            canonicalise(path, max_path=PATH_MAX)
        except RunnerError as e:  # a FIFO, socket or device; a path too long
            raise OutputRejected(f"output '{path}' of '{drv_path}' is not acceptable: "
                                 f"{e.message}") from None
        nar_hash, nar_size = nar.hash_path(path)
        found = references.scan(path, candidates)
        refs = frozenset(candidates[h] for h in found)
        ca = None
        if out.is_fixed:
            ca = _check_fixed(drv_path, path, out)
            if refs:
                raise OutputRejected(
                    f"fixed-output derivation '{drv_path}' must not refer to store paths; "
                    f"output '{path}' refers to {', '.join(sorted(refs))}")
        infos[name] = PathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size,
                               references=refs, deriver=drv_path, ca=ca)
    _check_references(drv_path, drv, own, infos, closure_of)
    return list(infos.values())


def _check_fixed(drv_path: str, path: str, out: DerivationOutput) -> str:
    expected, recursive = out.fixed_hash()
    if recursive:
        h = hashlib.new(expected.algo)
        for chunk in nar.dump(path):
            h.update(chunk)
        got = Hash(expected.algo, h.digest())
    elif os.path.isfile(path) and not os.path.islink(path):
        got = hash_file(expected.algo, path)
    else:
        raise OutputRejected(
            f"output '{path}' of fixed-output derivation '{drv_path}' with flat hashing "
            "must be a regular file")
    if got != expected:
        raise OutputRejected(
            f"hash mismatch in fixed-output derivation '{drv_path}':\n"
            f"  specified: {expected.sri()}\n       got: {got.sri()}",
            Status.HASH_MISMATCH)
    mode = "r:" if recursive else ""
    return f"fixed:{mode}{expected.algo}:{expected.base32()}"


def _resolve_specifiers(drv_path: str, attr: str, text: str,
                        own: Mapping[str, str]) -> set[str]:
    paths = set()
    for item in text.split():
        if item in own:
            paths.add(own[item])
        elif item.startswith("/"):
            paths.add(item)
        else:
            raise OutputRejected(
                f"derivation '{drv_path}' contains an illegal reference specifier '{item}' "
                f"in {attr}")
    return paths


def _check_references(
    drv_path: str, drv: Derivation, own: Mapping[str, str], infos: Mapping[str, PathInfo],
    closure_of: ClosureFn,
) -> None:
    by_path = {info.path: info for info in infos.values()}
    for attr in REFERENCE_CHECKS:
        if attr not in drv.env:
            continue
        spec = _resolve_specifiers(drv_path, attr, drv.env[attr], own)
        for info in infos.values():
            if attr.endswith("Requisites"):
                used = _closure(info.references, by_path, closure_of)
            else:
                used = set(info.references)
            bad = used - spec if attr.startswith("allowed") else used & spec
            if bad:
                kind = "requisites" if attr.endswith("Requisites") else "references"
                listing = "".join(f"\n  {p}" for p in sorted(bad))
                raise OutputRejected(
                    f"output '{info.path}' is not allowed to have these {kind} "
                    f"({attr}):{listing}")


def _closure(refs: Collection[str], new: Mapping[str, PathInfo],
             closure_of: ClosureFn) -> set[str]:
    """Closure over the not-yet-registered outputs plus the valid store."""
    seen: set[str] = set()
    stack = list(refs)
    old: set[str] = set()
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        if path in new:
            stack.extend(new[path].references)
        else:
            old.add(path)
    return seen | closure_of(old)
