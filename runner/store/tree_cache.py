"""The NAR hash of an unchanged input tree, without reading its files again.

A tree's fingerprint is the SHA-256 of what `lstat` says about every entry
(relative path, mode, size, mtime and ctime in ns, inode; symlink targets),
walked as `add_path` copies it. The cache maps fingerprints to NAR hash and
size under `<state>/tree-cache/`. A tree with an entry changed in the last
few seconds is not cached: a write within the same timestamp tick could
otherwise go unseen (git's "racy clean" problem).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable

from runner.store.hashes import Hash

Exclude = Callable[[str], bool]
RACY_SECONDS = 3


def fingerprint(src: str, exclude: Exclude | None) -> tuple[str, bool]:
    """(fingerprint, cacheable): not cacheable when something changed just now."""
    h = hashlib.sha256()
    newest = 0
    stack = [(src, "")]
    while stack:
        path, rel = stack.pop()
        st = os.lstat(path)
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0"
                 f"{st.st_ino}\0".encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            h.update(os.fsencode(os.readlink(path)) + b"\0")
        elif stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as entries:
                for entry in sorted(entries, key=lambda e: e.name, reverse=True):
                    child = rel + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        child += "/"
                    if exclude is None or not exclude(child):
                        stack.append((entry.path, child))
    cacheable = newest < (time.time() - RACY_SECONDS) * 1e9
    return h.hexdigest(), cacheable


def _file(state_dir: str, key: str) -> str:
    return os.path.join(state_dir, "tree-cache", key)


def lookup(state_dir: str, key: str) -> tuple[Hash, int] | None:
    try:
        with open(_file(state_dir, key), encoding="ascii") as f:
            digest, size = f.read().split()
        return Hash("sha256", bytes.fromhex(digest)), int(size)
    except (OSError, ValueError):
        return None


def record(state_dir: str, key: str, nar_hash: Hash, nar_size: int) -> None:
    path = _file(state_dir, key)
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{nar_hash.hex()} {nar_size}\n")
        os.replace(tmp, path)
