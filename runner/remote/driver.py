"""Realise derivations one after another on a remote executor, dependencies first.

A stand-in for the worker until it calls `RemoteExecutor` itself (docs/remote.md,
"Worker hook"): no parallelism, no substituters, no failure cache.
"""

from __future__ import annotations

import graphlib
import os
from collections.abc import Iterable

from runner.build.result import Status
from runner.remote.executor import RemoteExecutor, RemoteResult
from runner.store.canonicalise import remove_tree
from runner.store.derivation import Derivation
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks


def load_closure(store: LocalStore, drv_paths: Iterable[str]) -> dict[str, Derivation]:
    drvs: dict[str, Derivation] = {}
    stack = list(drv_paths)
    while stack:
        path = stack.pop()
        if path not in drvs:
            drvs[path] = store.read_derivation(path)
            stack.extend(drvs[path].input_drvs)
    return drvs


def realise(executor: RemoteExecutor, store: LocalStore,
            drv_paths: Iterable[str]) -> dict[str, RemoteResult]:
    """Every derivation of the closure of `drv_paths`, in dependency order."""
    drvs = load_closure(store, drv_paths)
    graph = {path: set(drv.input_drvs) for path, drv in drvs.items()}
    results: dict[str, RemoteResult] = {}
    for path in graphlib.TopologicalSorter(graph).static_order():
        results[path] = _realise_one(executor, store, path, drvs, results)
    return results


def _realise_one(executor: RemoteExecutor, store: LocalStore, path: str,
                 drvs: dict[str, Derivation], done: dict[str, RemoteResult]) -> RemoteResult:
    drv = drvs[path]
    outputs = {name: out.path for name, out in drv.outputs.items()}
    if all(store.is_valid(p) for p in outputs.values()):
        return RemoteResult(Status.ALREADY_VALID, b"", outputs)
    for dep in drv.input_drvs:
        if not done[dep].status.ok:
            return RemoteResult(Status.DEPENDENCY_FAILED, b"", outputs,
                                f"cannot build '{path}': its dependency '{dep}' failed")
    inputs = set(drv.input_srcs)
    for dep, names in drv.input_drvs.items():
        inputs.update(drvs[dep].outputs[name].path for name in names)
    closure = store.compute_closure(inputs)
    with PathLocks(outputs.values()):
        if all(store.is_valid(p) for p in outputs.values()):  # another process built it
            return RemoteResult(Status.ALREADY_VALID, b"", outputs)
        for out in outputs.values():
            if os.path.lexists(out) and not store.is_valid(out):
                remove_tree(out)
        return executor.build(path, drv, closure, store)
