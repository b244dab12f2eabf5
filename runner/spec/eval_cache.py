"""Remembering what a spec instantiated to, so an unchanged spec is not parsed again.

`runner build` of a spec whose outputs are all valid should cost a file read
and one query, not a YAML parse, a schema check and a translation. An entry,
keyed by the spec path, the store dir and the names asked for, records the
SHA-256 of every spec file read (imports too) and the resulting `.drv` and
output paths. It is used only when every file still has that hash; specs
with local or git inputs are never cached (their files would need checking
too). The entry only answers "which paths"; validity is always asked of the
store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from runner import __version__

VERSION = 1


@dataclass(frozen=True)
class Entry:
    files: dict[str, str]  # absolute path -> SHA-256 hex of its bytes
    drv_paths: list[str]  # the requested derivations' .drv files
    targets: list[tuple[str, dict[str, str]]]  # (drv path, outputs), in the order asked

    @property
    def paths(self) -> list[str]:
        return [*self.drv_paths, *(p for _, outs in self.targets for p in outs.values())]


def _file(state_dir: str, store_dir: str, spec_path: str, names: Sequence[str]) -> str:
    key = json.dumps([VERSION, __version__, store_dir, os.path.abspath(spec_path), list(names)])
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return os.path.join(state_dir, "eval-cache", name + ".json")


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def lookup(state_dir: str, store_dir: str, spec_path: str, names: Sequence[str]
           ) -> Entry | None:
    """The entry for this spec if none of its files changed since it was written."""
    try:
        with open(_file(state_dir, store_dir, spec_path, names), encoding="utf-8") as f:
            data = json.load(f)
        entry = Entry(dict(data["files"]), list(data["drvs"]),
                      [(t[0], dict(t[1])) for t in data["targets"]])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent or damaged: the slow path rewrites it
    if not entry.files or any(_digest(p) != h for p, h in entry.files.items()):
        return None
    return entry


def record(state_dir: str, store_dir: str, spec_path: str, names: Sequence[str],
           digests: dict[str, str | None], entry: Entry) -> None:
    """Write the entry for a spec just instantiated. `digests` (from `digests_of`, taken
    right after loading) must still match: a file edited meanwhile is not recorded."""
    if any(h is None or _digest(p) != h for p, h in digests.items()):
        return
    path = _file(state_dir, store_dir, spec_path, names)
    data = {"files": digests, "drvs": entry.drv_paths,
            "targets": [list(t) for t in entry.targets]}
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)


def digests_of(paths: Sequence[str]) -> dict[str, str | None]:
    return {os.path.abspath(p): _digest(p) for p in paths}
