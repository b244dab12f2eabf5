"""Comparing two store derivations down to the root cause (the job `nix-diff` does).

The walk is breadth-first over pairs of (old, new) derivations, iterative, each
pair once. A pair's own changes are those left after replacing every store path
the old derivation uses (its outputs, its inputs' outputs, its sources) by the
path the new one uses in the same role: a value that differs only because an
input changed is a consequence, not a cause. Changed input derivations are
compared one level down; changed sources are compared file by file.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runner.errors import RunnerError
from runner.store.derivation import Derivation
from runner.store.paths import name_part
from runner.why.listing import FileChange, compare

Loader = Callable[[str], "Derivation | None"]


@dataclass(frozen=True)
class Change:
    """One difference in one derivation. `kind`: env, args, builder, system,
    output-added, output-removed, output-hash, input-added, input-removed,
    input-outputs, source-added, source-removed, source, missing."""

    kind: str
    name: str = ""
    old: object = None
    new: object = None
    files: tuple[FileChange, ...] = ()
    collected: bool = False  # a source: the old one is no longer in the store
    old_renamed: str | None = None  # `old` with its inputs' paths replaced (for display)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"kind": self.kind}
        if self.name:
            data["name"] = self.name
        if self.old is not None:
            data["old"] = self.old
        if self.new is not None:
            data["new"] = self.new
        if self.kind == "source":
            data["oldCollected"] = self.collected
            data["files"] = [f.to_json() for f in self.files]
        return data


@dataclass
class Cause:
    """The changes of one derivation of the walk that are its own."""

    name: str
    old_path: str
    new_path: str
    trail: list[str]  # derivation names from the compared one down to this one
    changes: list[Change] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"derivation": self.name, "oldDrvPath": self.old_path,
                "newDrvPath": self.new_path, "trail": self.trail,
                "changes": [c.to_json() for c in self.changes]}


@dataclass
class Report:
    old: str
    new: str
    causes: list[Cause]

    @property
    def identical(self) -> bool:
        return self.old == self.new

    def to_json(self) -> dict[str, object]:
        return {"old": self.old, "new": self.new, "identical": self.identical,
                "rootCauses": [c.to_json() for c in self.causes]}


def _drv_name(path: str) -> str:
    name = name_part(path)
    return name[:-4] if name.endswith(".drv") else name


def _pairs(old: Iterable[str], new: Iterable[str]) -> tuple[list[tuple[str, str]], list[str],
                                                           list[str]]:
    """Match paths by name: (pairs, only old, only new). Equal paths pair with
    themselves; a name left with exactly one path on each side pairs them."""
    old_by: dict[str, set[str]] = {}
    new_by: dict[str, set[str]] = {}
    for path in old:
        old_by.setdefault(_drv_name(path), set()).add(path)
    for path in new:
        new_by.setdefault(_drv_name(path), set()).add(path)
    pairs: list[tuple[str, str]] = []
    removed: list[str] = []
    added: list[str] = []
    for name in sorted(old_by.keys() | new_by.keys()):
        a, b = old_by.get(name, set()), new_by.get(name, set())
        pairs += [(p, p) for p in sorted(a & b)]
        a, b = a - b, b - a
        if len(a) == 1 and len(b) == 1:
            pairs.append((a.pop(), b.pop()))
        else:
            removed += sorted(a)
            added += sorted(b)
    return pairs, removed, added


class _Renamer:
    """Replaces old store paths in a string by their counterparts in the new derivation."""

    def __init__(self, store_dir: str) -> None:
        self.map: dict[str, str] = {}
        self._re = re.compile(re.escape(store_dir) + r"/[0-9a-z]{32}-[A-Za-z0-9+\-._?=]+")
        self._any_hash = re.compile(re.escape(store_dir) + r"/[0-9a-z]{32}-")

    def apply(self, text: str) -> str:
        if not self.map:
            return text
        return self._re.sub(lambda m: self.map.get(m.group(0), m.group(0)), text)

    def masked(self, text: str) -> str:
        return self._any_hash.sub("<hash>-", text)


def diff(old_path: str, new_path: str, load: Loader, store_dir: str, *,
         patches: bool = False) -> Report:
    """The root causes that make `new_path` differ from `old_path`."""
    report = Report(old_path, new_path, [])
    if old_path == new_path:
        return report
    # Each pair of the walk is a node: (name, parent node); a trail is built only for
    # the causes reported, so a deep chain costs memory linear in its depth.
    nodes: list[tuple[str, int]] = []
    queue: deque[tuple[str, str, int]] = deque([(old_path, new_path, -1)])
    seen: set[tuple[str, str]] = {(old_path, new_path)}
    seen_sources: set[tuple[str, str]] = set()
    path_only: list[Cause] = []
    while queue:
        a_path, b_path, parent = queue.popleft()
        a, b = load(a_path), load(b_path)
        nodes.append((b.env.get("name", _drv_name(b_path)) if b else _drv_name(b_path), parent))
        node = len(nodes) - 1
        cause = Cause(nodes[node][0], a_path, b_path, [])
        if a is None or b is None:
            gone = a_path if a is None else b_path
            cause.changes.append(Change("missing", old=gone))
            cause.trail = _trail(nodes, node)
            report.causes.append(cause)
            continue
        renames = _Renamer(store_dir)
        below = _compare_inputs(a, b, load, renames, cause)
        for pair in below:
            if pair not in seen:
                seen.add(pair)
                queue.append((*pair, node))
        _compare_sources(a, b, renames, cause, seen_sources, patches)
        leftover = _compare_own(a, b, renames, cause)
        if cause.changes:
            cause.trail = _trail(nodes, node)
            report.causes.append(cause)
        elif leftover:
            path_only.append(Cause(cause.name, a_path, b_path, _trail(nodes, node), leftover))
    if not report.causes:
        # Nothing but store paths differ (e.g. a hard-coded path): show those.
        report.causes = path_only
    return report


def _trail(nodes: list[tuple[str, int]], node: int) -> list[str]:
    trail = []
    while node >= 0:
        name, node = nodes[node]
        trail.append(name)
    return trail[::-1]


def _compare_inputs(a: Derivation, b: Derivation, load: Loader, renames: _Renamer,
                    cause: Cause) -> list[tuple[str, str]]:
    pairs, removed, added = _pairs(a.input_drvs, b.input_drvs)
    cause.changes += [Change("input-removed", _drv_name(p), old=p) for p in removed]
    cause.changes += [Change("input-added", _drv_name(p), new=p) for p in added]
    below = []
    for old, new in pairs:
        if list(a.input_drvs[old]) != list(b.input_drvs[new]):
            cause.changes.append(Change("input-outputs", _drv_name(new),
                                        list(a.input_drvs[old]), list(b.input_drvs[new])))
        if old == new:
            continue
        below.append((old, new))
        renames.map[old] = new
        da, db = load(old), load(new)
        if da is not None and db is not None:
            for out, o in da.outputs.items():
                if out in db.outputs and o.path:
                    renames.map[o.path] = db.outputs[out].path
    return below


def _compare_sources(a: Derivation, b: Derivation, renames: _Renamer, cause: Cause,
                     seen: set[tuple[str, str]], patches: bool) -> None:
    pairs, removed, added = _pairs(a.input_srcs, b.input_srcs)
    cause.changes += [Change("source-removed", name_part(p), old=p) for p in removed]
    cause.changes += [Change("source-added", name_part(p), new=p) for p in added]
    for old, new in pairs:
        if old == new:
            continue
        renames.map[old] = new
        if (old, new) in seen:  # reported where the walk met it first
            continue
        seen.add((old, new))
        if not os.path.lexists(old):
            cause.changes.append(Change("source", name_part(new), old, new, collected=True))
        elif not os.path.lexists(new):
            cause.changes.append(Change("missing", name_part(new), new=new))
        else:
            cause.changes.append(Change("source", name_part(new), old, new,
                                        tuple(compare(old, new, patches=patches))))


def _compare_own(a: Derivation, b: Derivation, renames: _Renamer, cause: Cause) -> list[Change]:
    """Own changes go to `cause`; returns those that differ only in store paths."""
    for out in a.outputs.keys() - b.outputs.keys():
        cause.changes.append(Change("output-removed", out))
    for out in b.outputs.keys() - a.outputs.keys():
        cause.changes.append(Change("output-added", out))
    for out in sorted(a.outputs.keys() & b.outputs.keys()):
        oa, ob = a.outputs[out], b.outputs[out]
        renames.map[oa.path] = ob.path
        if (oa.hash_algo, oa.hash) != (ob.hash_algo, ob.hash):
            cause.changes.append(Change("output-hash", out, _fixed(oa.hash_algo, oa.hash),
                                        _fixed(ob.hash_algo, ob.hash)))
    leftover: list[Change] = []

    def check(kind: str, name: str, old: str | None, new: str | None) -> None:
        if old == new:
            return
        change = Change(kind, name, old, new,
                        old_renamed=None if old is None else renames.apply(old))
        if old is None or new is None:
            cause.changes.append(change)
        elif renames.apply(old) == new:
            return
        elif renames.masked(old) == renames.masked(new):
            leftover.append(change)
        else:
            cause.changes.append(change)

    check("system", "", a.system, b.system)
    check("builder", "", a.builder, b.builder)
    if len(a.args) == len(b.args):
        for i, (x, y) in enumerate(zip(a.args, b.args, strict=True)):
            check("args", str(i), x, y)
    else:
        old_args = [renames.apply(x) for x in a.args]
        if old_args != list(b.args):
            cause.changes.append(Change("args", "", list(a.args), list(b.args)))
    for key in sorted(a.env.keys() | b.env.keys()):
        if key in b.outputs and key in a.outputs:
            continue  # an output's own path: follows from everything else
        check("env", key, a.env.get(key), b.env.get(key))
    return leftover


def _fixed(algo: str, digest: str) -> str | None:
    return f"{algo}:{digest}" if digest else None


def store_loader(store_dir: str, archived: Callable[[str], bytes | None]) -> Loader:
    """Load a derivation from the store, else from the history archive; None if neither
    has it. A corrupt file is an error (`bad-drv`)."""
    from runner.store.derivation import parse

    cache: dict[str, Derivation | None] = {}

    def load(path: str) -> Derivation | None:
        if path in cache:
            return cache[path]
        data: bytes | None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = archived(path)
        except OSError as e:
            raise RunnerError(f"cannot read derivation '{path}': {e.strerror}",
                              reason="bad-drv") from None
        cache[path] = None if data is None else parse(data, path)
        return cache[path]

    return load

