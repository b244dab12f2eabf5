"""`--dry-run`: what a build would do, found by walking the graph without building."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.build import failure_cache
from runner.build.unused_caches import CacheWatch
from runner.settings import Settings
from runner.store.local_store import LocalStore
from runner.store.path_info import FailureRecord
from runner.substituters.narinfo import NarInfo
from runner.substituters.substitute import Rejection, find_offer

# What a substituter would deliver for a path (trusted), or None.
FindOffer = Callable[[str], "NarInfo | None"]


def offers(store: LocalStore, watch: CacheWatch, settings: Settings) -> FindOffer:
    """Lookups through the watched caches: what goes wrong is summed up by `watch.lines`
    instead of warned about one path at a time."""
    substituters = watch.substituters

    def find(path: str) -> NarInfo | None:
        rejections: list[Rejection] = []
        info = find_offer(store, path, substituters, settings, warn=_quiet,
                          rejections=rejections)
        watch.note(path, rejections)
        return info
    return find


def _quiet(message: str) -> None:
    pass  # a cache that is down: `CacheWatch` saw the error and reports it


def built_outputs(p: Plan) -> set[str]:
    """The output paths no substituter will deliver: the plan builds them."""
    return {out for drv in p.build for out in p.outputs[drv].values()}


def _no_offers(path: str) -> NarInfo | None:
    return None


@dataclass
class Plan:
    build: list[str] = field(default_factory=list)  # drv paths, dependencies first
    fetch: list[str] = field(default_factory=list)  # output paths a substituter has
    cached_failures: dict[str, FailureRecord] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for drv_path, outs in self.outputs.items():
            if drv_path in self.cached_failures:
                record = self.cached_failures[drv_path]
                entries.append({"drvPath": drv_path, "status": "cached-failure",
                                "outputs": outs, "failedAt": record.time,
                                "exitStatus": record.exit_status})
            elif drv_path in self.build:
                entries.append({"drvPath": drv_path, "status": "will-build", "outputs": outs})
            elif any(p in self.fetch for p in outs.values()):
                entries.append({"drvPath": drv_path, "status": "will-substitute",
                                "outputs": outs})
            else:
                entries.append({"drvPath": drv_path, "status": "valid", "outputs": outs})
        return entries


def plan(store: LocalStore, drv_paths: list[str], *, use_failure_cache: bool,
         find: FindOffer = _no_offers) -> Plan:
    result = Plan()
    seen: set[str] = set()
    fetching: set[str] = set()

    def fetchable(path: str) -> bool:
        """`path` and the references it would bring along can all be fetched."""
        if path in fetching or store.is_valid(path):
            return True
        info = find(path)
        if info is None or not all(fetchable(r) for r in info.references - {path}):
            return False
        fetching.add(path)
        result.fetch.append(path)
        return True

    def visit(drv_path: str) -> None:
        if drv_path in seen:
            return
        seen.add(drv_path)
        drv = store.read_derivation(drv_path)
        outs = {name: out.path for name, out in drv.outputs.items()}
        result.outputs[drv_path] = outs
        if all(store.is_valid(p) for p in outs.values()):
            return
        if drv.env.get("allowSubstitutes") != "" and all(fetchable(p) for p in outs.values()):
            return
        if use_failure_cache:
            record = failure_cache.find_failure(store, outs.values())
            if record is not None:
                result.cached_failures[drv_path] = record
                return
        for dep in drv.input_drvs:
            visit(dep)
        result.build.append(drv_path)

    for path in drv_paths:
        visit(path)
    return result


def describe(p: Plan) -> str:
    lines: list[str] = []
    if p.build:
        lines.append(f"{_these(len(p.build), 'derivation')} will be built:")
        lines.extend(f"  {path}" for path in p.build)
    if p.fetch:
        lines.append(f"{_these(len(p.fetch), 'path')} will be fetched:")
        lines.extend(f"  {path}" for path in p.fetch)
    if p.cached_failures:
        lines.append(f"{_these(len(p.cached_failures), 'derivation')} failed previously "
                     "(pass --rebuild-failed to retry):")
        for path, record in p.cached_failures.items():
            age = failure_cache.describe_age(time.time() - record.time)
            lines.append(f"  {path} (cached {age})")
    if not lines:
        lines.append("nothing to build: every output is valid")
    return "\n".join(lines)


def _these(count: int, noun: str) -> str:
    """`this derivation` / `these 2 derivations`, as Nix words its dry-run lists."""
    return f"this {noun}" if count == 1 else f"these {count} {noun}s"
