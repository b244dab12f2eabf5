"""Deduplication: identical store files become hard links to one inode.

Every regular file is keyed by the NAR hash of the file alone (contents plus
the executable bit, so an executable never shares an inode with a plain
file) and linked into `<store>/.links/<base32 hash>`. A file whose key is
already there is replaced by a hard link to it: link to a temp name in the
store dir, then rename over the file, so a reader sees the old inode or the
new one and never a missing file. Store files are read-only with mtime 1,
so every link looks the same; only their directories must be opened up for
the rename and closed again afterwards. The collector deletes links whose
count has dropped to 1 (no store path uses them any more).

Optimising holds `gc.lock` shared: a collection never sees a half-made temp
link, and the link it is about to reuse cannot be collected under it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.store import nar
from runner.store.layout import LINKS_DIR, TEMP_LINK_PREFIX
from runner.store.roots import gc_lock

if TYPE_CHECKING:  # the store passes `optimise_path` to itself (auto-optimise)
    from runner.store.local_store import LocalStore


@dataclass
class OptimiseStats:
    files: int = 0  # regular files looked at
    files_linked: int = 0  # replaced by a link to an identical file
    bytes_saved: int = 0  # apparent size of the copies that are gone

    def summary(self) -> str:
        mib = self.bytes_saved / (1024 * 1024)
        return (f"{self.files_linked} of {self.files} files linked, "
                f"{mib:.2f} MiB ({self.bytes_saved} bytes) saved")


def links_dir(store_dir: str) -> str:
    return os.path.join(store_dir, LINKS_DIR)


def optimise_path(store: LocalStore, path: str, stats: OptimiseStats | None = None,
                  ) -> OptimiseStats:
    """Deduplicate the files of one store path (what `auto-optimise` calls after adding it)."""
    stats = OptimiseStats() if stats is None else stats
    with gc_lock(store.state_dir, exclusive=False, notice=sys.stderr):
        _optimise_tree(store.store_dir, path, stats)
    return stats


def optimise_store(store: LocalStore) -> OptimiseStats:
    """Deduplicate every valid path."""
    stats = OptimiseStats()
    paths = [row[0] for row in store.db.execute("select path from ValidPaths order by path")]
    for path in paths:
        with gc_lock(store.state_dir, exclusive=False, notice=sys.stderr):
            if store.is_valid(path):  # not collected since we listed it
                _optimise_tree(store.store_dir, path, stats)
    return stats


def _optimise_tree(store_dir: str, path: str, stats: OptimiseStats) -> None:
    os.makedirs(links_dir(store_dir), exist_ok=True)
    try:
        stack = [path]
        while stack:
            current = stack.pop()
            st = os.lstat(current)
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(current) as entries:
                    stack.extend(e.path for e in entries)
            elif stat.S_ISREG(st.st_mode):
                _optimise_file(store_dir, current, st, stats)
    except OSError as e:
        raise RunnerError(f"cannot optimise '{e.filename or path}': {e.strerror}",
                          reason="io") from None


def _optimise_file(store_dir: str, path: str, st: os.stat_result, stats: OptimiseStats) -> None:
    if st.st_mode & stat.S_IWUSR:
        # Store files are read-only; a writable one was modified behind our
        # back and must not be spread to other paths.
        print(f"warning: skipping suspicious writable file '{path}'", file=sys.stderr)
        return
    stats.files += 1
    link = os.path.join(links_dir(store_dir), nar.hash_path(path)[0].base32())
    while True:
        try:
            os.link(path, link)
            return  # first of its kind: it is now the shared copy
        except FileExistsError:
            pass
        try:
            link_st = os.lstat(link)
        except FileNotFoundError:
            continue  # collected between our two calls: become the shared copy
        if (link_st.st_dev, link_st.st_ino) == (st.st_dev, st.st_ino):
            return  # already shared
        if not same_contents(path, st, link, link_st):
            # Its name says it holds what `path` holds, but it was modified in
            # place: linking to it would corrupt `path`. Drop it; `path` takes its place.
            print(f"warning: removing corrupted link '{link}'", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            continue
        if _replace_with_link(store_dir, path, link):
            break
        return
    stats.files_linked += 1
    if st.st_nlink == 1:
        stats.bytes_saved += st.st_size


def same_contents(path: str, st: os.stat_result, other: str, other_st: os.stat_result) -> bool:
    """Do two regular files hold the same bytes and executable bit? (Size first: cheap.)"""
    if st.st_size != other_st.st_size or (st.st_mode ^ other_st.st_mode) & stat.S_IXUSR:
        return False
    with open(path, "rb") as a, open(other, "rb") as b:
        while True:
            chunk = a.read(1 << 16)
            if chunk != b.read(1 << 16):
                return False
            if not chunk:
                return True


def _replace_with_link(store_dir: str, path: str, link: str) -> bool:
    """Atomically make `path` another name of `link`; False when the link is full."""
    tmp = os.path.join(store_dir, f"{TEMP_LINK_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        os.link(link, tmp)
    except OSError as e:
        if e.errno == errno.EMLINK:
            return False  # too many links to one inode (common for empty files)
        raise
    parent = os.path.dirname(path)
    parent_st = os.lstat(parent)
    toggle = os.path.normpath(parent) != os.path.normpath(store_dir)
    try:
        if toggle:
            os.chmod(parent, stat.S_IMODE(parent_st.st_mode) | stat.S_IWUSR)
        os.rename(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        if e.errno == errno.EMLINK:
            return False
        raise
    finally:
        if toggle:
            # Back to read-only, and the mtime the rename just bumped.
            os.chmod(parent, stat.S_IMODE(parent_st.st_mode))
            os.utime(parent, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
    return True
