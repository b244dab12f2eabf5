"""Recording what `runner build` / `runner check` ended with, for `runner why`."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.store.derivation import parse
from runner.why import history

if TYPE_CHECKING:
    from runner.build.result import BuildResult
    from runner.settings import Settings
    from runner.spec.translate import Instantiated


def record_build(settings: Settings, spec_path: str | os.PathLike[str],
                 targets: Mapping[str, Instantiated],
                 results: Mapping[str, BuildResult]) -> None:
    """Record the outcome of every target that has a result, under the spec's real
    path. History is a help, not part of the build: a failure to record is a warning,
    never a failed build."""
    spec = os.path.realpath(spec_path)
    rows = [(spec, key, t.drv_path, results[t.drv_path].status.value,
             results[t.drv_path].status.ok)
            for key, t in targets.items() if t.drv_path in results]
    if not rows:
        return
    try:
        history.record(settings.state_dir, settings.store_dir, rows,
                       lambda paths: _closure(targets, paths))
    except (sqlite3.Error, OSError, RunnerError) as e:
        print(f"warning: could not record the build history: {e}", file=sys.stderr)


def _closure(targets: Mapping[str, Instantiated], paths: set[str]
             ) -> Iterator[tuple[str, bytes]]:
    """(path, ATerm) of every derivation the targets among `paths` depend on, themselves
    included; iterative, each read once."""
    seen: set[str] = set()
    stack: list[str] = []
    for t in targets.values():
        if t.drv_path in paths and t.drv_path not in seen:
            seen.add(t.drv_path)
            yield t.drv_path, t.drv.data
            stack.extend(t.drv.input_drvs)
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, "rb") as f:
            data = f.read()
        yield path, data
        stack.extend(parse(data, path).input_drvs)
