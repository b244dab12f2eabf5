"""`runner store roots`: every GC root, with what made it one."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from runner.store import check_roots
from runner.store.roots import find_roots, gc_lock, read_temp_roots, roots_dir

_TEMP = re.compile(r"temporary root of process (\d+)")


@dataclass(frozen=True)
class Root:
    store_path: str
    kind: str  # "out-link" (indirect), "direct", "check", "temporary"
    link: str | None  # the symlink that roots it (None for a temporary root)
    pid: int | None = None  # the process holding a temporary root
    check: check_roots.CheckRoot | None = None

    def describe(self) -> str:
        if self.check is not None:
            gone = "" if self.check.repository_exists else ", repository gone"
            return (f"check '{self.check.check}' ({self.check.output}) of "
                    f"'{self.check.repository}'{gone}")
        if self.pid is not None:
            return f"{{temp:{self.pid}}}"
        return str(self.link)

    def to_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"path": self.store_path, "kind": self.kind,
                                    "link": self.link}
        if self.pid is not None:
            entry["pid"] = self.pid
        if self.check is not None:
            entry.update(self.check.to_json())
        return entry


def list_roots(store_dir: str, state_dir: str) -> list[Root]:
    """The roots a collection would see now, sorted by kind then link.

    Takes the GC lock exclusively for a moment, as the collector reads roots (it
    also drops dead processes' temporary roots and released `auto/` entries), so it
    waits for a running collection."""
    checks = {r.link: r for r in check_roots.list_roots(state_dir)}
    direct_prefix = roots_dir(state_dir) + os.sep
    found: list[Root] = []
    with gc_lock(state_dir, exclusive=True, notice=sys.stderr):
        permanent = find_roots(store_dir, state_dir)
        temp = read_temp_roots(state_dir)
    for path, sources in permanent.items():
        for source in sources:
            if source in checks:
                found.append(Root(path, "check", source, check=checks[source]))
            elif source.startswith(direct_prefix):
                found.append(Root(path, "direct", source))
            else:
                found.append(Root(path, "out-link", source))
    for path, sources in temp.items():
        for source in sources:
            match = _TEMP.fullmatch(source)
            found.append(Root(path, "temporary", None,
                              pid=int(match.group(1)) if match else None))
    order = {"out-link": 0, "direct": 1, "check": 2, "temporary": 3}
    found.sort(key=lambda r: (order[r.kind], r.link or "", r.pid or 0, r.store_path))
    return found
