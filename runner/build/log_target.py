"""What `runner log TARGET [NAME]` shows the log of: a `.drv`, an output (or a link to
one, as `nix log ./result` takes), or a spec's derivation by name."""

from __future__ import annotations

import os
from typing import Protocol

from runner.errors import RunnerError

# Symlink hops followed from an out-link towards the store before giving up (a loop).
_MAX_HOPS = 40


class DeriverStore(Protocol):
    store_dir: str

    def query_deriver(self, path: str) -> str | None: ...

    def query_valid_derivers(self, path: str) -> set[str]: ...


def store_path_of(store_dir: str, target: str) -> str | None:
    """The store path `target` names, lies inside, or links to (through any chain of
    symlinks, as Nix's followLinksToStorePath); None when it leads outside the store."""
    path = os.path.abspath(target)
    for _ in range(_MAX_HOPS):
        top = _top_store_path(store_dir, path)
        if top is not None:
            return top
        if not os.path.islink(path):
            break
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    # A store dir reached through a symlinked parent (/tmp → /private/tmp, …).
    real_store, real = os.path.realpath(store_dir), os.path.realpath(target)
    if real.startswith(real_store + "/"):
        return _top_store_path(store_dir, store_dir + real[len(real_store):])
    return None


def _top_store_path(store_dir: str, path: str) -> str | None:
    if not path.startswith(store_dir + "/"):
        return None
    name = path[len(store_dir) + 1:].split("/", 1)[0]
    return f"{store_dir}/{name}" if name else None


def derivation_candidates(store: DeriverStore, target: str, name: str | None) -> list[str]:
    """The `.drv` paths whose log `runner log TARGET [NAME]` may show, best first."""
    if name is not None:
        return [_spec_drv(store.store_dir, target, name)]
    path = store_path_of(store.store_dir, target)
    if path is None:
        if os.path.isfile(target) and target.endswith((".yaml", ".yml", ".json")):
            raise RunnerError(f"'{target}' is a spec; name the derivation whose log to show: "
                              f"runner log {target} NAME", reason="usage")
        raise RunnerError(f"'{target}' is not a store path, nor a link into the store "
                          f"'{store.store_dir}'; to see a log of a spec's derivation, name it: "
                          "runner log SPEC NAME", reason="usage")
    if path.endswith(".drv"):
        return [path]
    found: list[str] = []
    deriver = store.query_deriver(path)
    if deriver:
        found.append(deriver)
    found.extend(sorted(store.query_valid_derivers(path) - set(found)))
    if not found:
        raise RunnerError(f"'{path}' is not a known output of any derivation", reason="no-log")
    return found


def _spec_drv(store_dir: str, spec_path: str, name: str) -> str:
    from runner.spec.load import load_spec
    from runner.spec.targets import parse_target
    from runner.spec.translate import source_paths, translate

    spec = load_spec(spec_path)
    key = parse_target(spec, name).key  # `tests^junit` is `tests`'s log; unknown: a hint
    sources = source_paths(spec, store_dir, [key])
    return translate(spec, store_dir, sources, [key])[key].drv_path


def find_log(store: DeriverStore, state_dir: str, target: str, name: str | None,
             attempt: int | None = None) -> bytes:
    """The stored log `runner log TARGET [NAME]` prints (the first candidate that has one);
    `attempt`: that attempt of a retried build (None: the last)."""
    return locate_log(store, state_dir, target, name, attempt)[1]


def locate_log(store: DeriverStore, state_dir: str, target: str, name: str | None,
               attempt: int | None = None) -> tuple[str, bytes]:
    """`find_log`, with the derivation whose log it is."""
    from runner.build.logs import read_attempt_log

    candidates = derivation_candidates(store, target, name)
    for drv_path in candidates:
        data = read_attempt_log(state_dir, drv_path, attempt)
        if data is not None:
            return drv_path, data
    raise RunnerError(f"no build log available for '{candidates[0]}'", reason="no-log")


def kept_junit(state_dir: str, drv_path: str, attempt: int | None) -> str:
    """The failing test cases of a failed attempt's kept JUnit XML, as `runner log` shows
    them after the log ("" when none was kept)."""
    from runner.build.logs import attempts_logged, junit_kept_path

    if attempt is None:
        attempt = attempts_logged(state_dir, drv_path)
    kept = junit_kept_path(state_dir, drv_path, attempt)
    if not os.path.isdir(kept):
        return ""
    from runner.report import junit

    parsed = junit.read(kept)
    if isinstance(parsed, junit.JunitProblem):
        return f"warning: {parsed}"
    lines = [f"JUnit XML of attempt {attempt} (kept with the failure): {parsed.line()}"]
    for case in parsed.failing:
        lines.append(f"  ✗ {case.title}: {case.message}")
        lines += [f"      {line}" for line in case.output]
    return "\n".join(lines)
