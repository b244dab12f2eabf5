"""Questions about a closure: how big it is, and why it contains a given path."""

from __future__ import annotations

import itertools
import os
import stat
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from runner.errors import RunnerError, raise_not_valid
from runner.store.local_store import LocalStore
from runner.store.paths import hash_part

_CHUNK = 1 << 16
_CONTEXT = 24  # bytes shown either side of a mention


def closure_size(store: LocalStore, paths: str | Iterable[str]) -> int:
    """Total NAR size of the closure of `paths` (what `path-info --closure-size` prints)."""
    wanted = [paths] if isinstance(paths, str) else list(paths)
    total = 0
    for path in store.compute_closure(wanted):
        info = store.query_path_info(path)
        total += info.nar_size if info is not None else 0
    return total


def shortest_chain(store: LocalStore, start: str, goal: str) -> list[str] | None:
    """The shortest reference chain start -> … -> goal (both included), or None."""
    for path in (start, goal):
        if not store.is_valid(path):
            raise_not_valid(path)
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        path = queue.popleft()
        if path == goal:
            chain = [path]
            while (previous := parent[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for ref in sorted(store.query_references(path)):
            if ref not in parent:
                parent[ref] = path
                queue.append(ref)
    return None


@dataclass(frozen=True)
class Mention:
    file: str  # relative to the store path; "" for the path itself
    excerpt: str  # printable bytes around the hash, the hash included


def chain_report(chain: list[str]) -> list[str]:
    """`why-depends`' lines for `chain` (start first): each step indented below the one
    that refers to it, with the files that mention it (store files are readable by all)."""
    lines = [chain[0]]
    for depth, (path, dep) in enumerate(itertools.pairwise(chain)):
        indent = "    " * depth
        lines += [f"{indent}  {m.file or '.'}: {m.excerpt}" for m in find_mentions(path, dep)]
        lines.append(f"{indent}└── {dep}")
    return lines


def find_mentions(path: str, target: str) -> list[Mention]:
    """Every file (or symlink) inside `path` that contains the hash part of `target`."""
    try:
        return _find_mentions(path, hash_part(target).encode())
    except OSError as e:
        raise RunnerError(f"cannot read '{e.filename or path}': {e.strerror}",
                          reason="io") from None


def _find_mentions(path: str, needle: bytes) -> list[Mention]:
    found = []
    stack = [path]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        rel = os.path.relpath(current, path) if current != path else ""
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack.extend(sorted((e.path for e in entries), reverse=True))
        elif stat.S_ISLNK(st.st_mode):
            data = os.fsencode(os.readlink(current))
            if needle in data:
                found.append(Mention(rel, _excerpt(data, data.index(needle), len(needle))))
        elif stat.S_ISREG(st.st_mode):
            excerpt = _scan_file(current, needle)
            if excerpt is not None:
                found.append(Mention(rel, excerpt))
    return found


def _scan_file(path: str, needle: bytes) -> str | None:
    """The first mention of `needle` in a file, read in chunks that overlap by a margin."""
    keep = len(needle) + _CONTEXT
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            data = tail + chunk
            at = data.find(needle)
            if at >= 0:
                data += f.read(_CONTEXT)
                return _excerpt(data, at, len(needle))
            tail = data[-keep:]
    return None


def _excerpt(data: bytes, at: int, length: int) -> str:
    start = max(0, at - _CONTEXT)
    piece = data[start: at + length + _CONTEXT]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in piece)
    return ("…" if start > 0 else "") + text + ("…" if at + length + _CONTEXT < len(data) else "")
