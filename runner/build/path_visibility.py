"""Tools a sandboxed builder cannot see: `PATH` entries, or the targets of the tools in
them, outside every path the sandbox shows.

A virtualenv on `PATH` whose `python3` links into a directory the sandbox does
not show makes the builder run whatever `python3` comes next on `PATH` (the
system one, with other packages), and the build may even pass. `PathVisibility`
says so once per run and entry, naming the `sandbox-paths` setting that would
show it. It works on a list of visible paths (`visible_paths` derives it from a
sandbox plan), and reads the host's file system only for entries not seen yet.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from runner.sandbox.plan import SandboxPlan
from runner.store.paths import is_in_store

# Mount kinds whose target shows host content (a tmpfs shows nothing of the host).
_HOST_CONTENT = ("bind", "device")


def visible_paths(plan: SandboxPlan) -> list[str]:
    """The paths inside the sandbox that show host files: its binds, the input closure
    and the build dir. Not the store dir itself, which shows only the closure."""
    return sorted(m.target for m in plan.mounts
                  if m.kind in _HOST_CONTENT and m.target != plan.store_dir)


def is_visible(path: str, visible: Sequence[str] | frozenset[str]) -> bool:
    """`path` or one of its ancestors is a visible path (each ancestor looked up once:
    a closure of thousands of store paths costs no more than a handful)."""
    shown = visible if isinstance(visible, frozenset) else frozenset(visible)
    if "/" in shown:
        return True
    path = posixpath.normpath(path)
    while path not in ("/", ""):
        if path in shown:
            return True
        path = posixpath.dirname(path)
    return False


@dataclass(frozen=True)
class Hidden:
    entry: str  # the PATH entry
    tool: str | None = None  # a tool in it whose target is hidden
    target: str | None = None  # where that tool really is
    store_path: str | None = None  # the store path holding `target`, when in the store

    def message(self, build: str) -> str:
        """`build` names the build whose PATH it is (a derivation or its output)."""
        if self.tool is None:
            fix = (f"make '{self.store_path}' an input of the derivation" if self.store_path
                   else f"add '{self.entry}' to the sandbox-paths setting")
            return (f"PATH entry '{self.entry}' of '{build}' is not visible in the "
                    f"sandbox, so its tools are not found there; {fix} to show it")
        fix = (f"make '{self.store_path}' an input of the derivation to show it"
               if self.store_path else
               f"add '{_suggest(posixpath.dirname(self.target or ''))}' to the "
               "sandbox-paths setting to show it")
        return (f"'{self.tool}' (PATH entry '{self.entry}' of '{build}') links to "
                f"'{self.target}', which is not visible in the sandbox: the builder will "
                f"run another '{posixpath.basename(self.tool)}' from PATH, or none; {fix}")


def find_hidden(entries: Iterable[str], visible: Sequence[str] | frozenset[str], *,
                tools: Callable[[str], list[tuple[str, str]]] | None = None) -> list[Hidden]:
    """For each PATH entry that exists on the host: hidden as a whole, or the tools in
    it (symlinks) whose resolved target is hidden. Missing entries are no concern here
    (nor are tools whose target is missing: they are broken everywhere)."""
    shown = frozenset(posixpath.normpath(v) for v in visible)
    list_tools = tools or symlinked_tools
    found: list[Hidden] = []
    for entry in entries:
        if not entry.startswith("/") or not os.path.isdir(entry):
            continue
        if not is_visible(entry, shown):
            found.append(Hidden(entry))
            continue
        found.extend(Hidden(entry, tool, target) for tool, target in list_tools(entry)
                     if not is_visible(target, shown))
    return found


def symlinked_tools(entry: str) -> list[tuple[str, str]]:
    """(tool, resolved target) for each symlink in the dir `entry` whose target exists."""
    tools: list[tuple[str, str]] = []
    try:
        listing = sorted(os.scandir(entry), key=lambda e: e.name)
    except OSError:
        return tools
    for item in listing:
        if item.is_symlink():
            target = os.path.realpath(item.path)
            if os.path.exists(target):
                tools.append((item.path, target))
    return tools


def _suggest(directory: str) -> str:
    """`/opt/py/bin` -> `/opt/py`: a tool's `bin` dir alone rarely runs (its libraries
    are next to it)."""
    return posixpath.dirname(directory) if posixpath.basename(directory) == "bin" \
        else directory


@dataclass
class PathVisibility:
    """One run's check: each hidden entry or tool is warned about once. Each PATH dir is
    listed once per run, and its verdict against the host paths shown (the same for
    every build of a run) is kept: only tools linking into the store, whose visibility
    depends on each build's closure, are looked at again (the default PATH of every
    build is checked in microseconds after the first)."""

    warn: Callable[[str], None]
    store_dir: str = ""
    warned: set[Hidden] = field(default_factory=set)
    listings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    verdicts: dict[tuple[str, frozenset[str]], list[Hidden]] = field(default_factory=dict)
    in_store: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # store tools
    lock: threading.Lock = field(default_factory=threading.Lock)  # builds start in threads

    def check(self, build: str, env: Mapping[str, str],
              visible: Sequence[str] | frozenset[str]) -> None:
        entries = list(dict.fromkeys(e for e in env.get("PATH", "").split(":") if e))
        if not entries:
            return
        with self.lock:
            new = [h for h in self._hidden(entries, visible) if h not in self.warned]
            self.warned.update(new)
        for hidden in new:
            self.warn(hidden.message(build))

    def _hidden(self, entries: list[str], visible: Sequence[str] | frozenset[str]
                ) -> list[Hidden]:
        shown = frozenset(posixpath.normpath(v) for v in visible)
        host = frozenset(v for v in shown if not self._in_store(v))
        found: list[Hidden] = []
        for entry in entries:
            if self._in_store(entry):
                found += [replace(h, store_path=self._store_path(h.target or h.entry))
                          if self._in_store(h.target or h.entry) else h
                          for h in find_hidden([entry], shown, tools=self._tools)]
                continue
            key = (entry, host)
            if key not in self.verdicts:
                self.verdicts[key] = find_hidden([entry], host, tools=self._host_tools)
            found += self.verdicts[key]
            if is_visible(entry, host):
                found += [Hidden(entry, tool, target, self._store_path(target))
                          for tool, target in self._store_tools(entry)
                          if not is_visible(target, shown)]
        return found

    def _in_store(self, path: str) -> bool:
        return bool(self.store_dir) and is_in_store(path, self.store_dir.rstrip("/"))

    def _store_path(self, path: str) -> str:
        top = path[len(self.store_dir.rstrip("/")) + 1:].split("/", 1)[0]
        return f"{self.store_dir.rstrip('/')}/{top}"

    def _tools(self, entry: str) -> list[tuple[str, str]]:
        if entry not in self.listings:
            self.listings[entry] = symlinked_tools(entry)
        return self.listings[entry]

    def _host_tools(self, entry: str) -> list[tuple[str, str]]:
        return [t for t in self._tools(entry) if not self._in_store(t[1])]

    def _store_tools(self, entry: str) -> list[tuple[str, str]]:
        if entry not in self.in_store:
            self.in_store[entry] = [t for t in self._tools(entry) if self._in_store(t[1])]
        return self.in_store[entry]
