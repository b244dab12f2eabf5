"""Staging trees in the store dir before they become store paths.

Everything here works inside the store dir (same filesystem), so the final
rename into place is atomic; a crash leaves only `.tmp-*` dirs, which the
next GC sweeps (`TempDir.is_abandoned`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from runner.errors import RunnerError, os_error_text
from runner.store import nar
from runner.store.canonicalise import (
    MTIME_STORE,
    canonicalise,
    check_file_type,
    remove_tree,
    rename_tree,
)
from runner.store.hashes import Hash
from runner.store.layout import TEMP_DIR_PREFIX
from runner.store.nar import Exclude

T = TypeVar("T")


def io_call(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a file operation; an OSError becomes a one-line RunnerError."""
    try:
        return func(*args, **kwargs)
    except OSError as e:
        raise RunnerError(os_error_text(what, e), reason="io") from None


class TempDir:
    """A private dir in the store (same filesystem, so the final rename is atomic).

    Its name carries the owner's pid and the owner holds an flock on it, so
    a sweeper can tell an abandoned one (lock free and owner gone) from one
    in use, without guessing from times.
    """

    PREFIX = TEMP_DIR_PREFIX

    def __init__(self, store_dir: str) -> None:
        self.path = io_call(f"cannot create a temp dir in '{store_dir}'", tempfile.mkdtemp,
                              prefix=f"{self.PREFIX}{os.getpid()}-", dir=store_dir)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __enter__(self) -> TempDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            remove_tree(self.path)
        finally:
            os.close(self._fd)

    @classmethod
    def is_abandoned(cls, path: str) -> bool:
        try:
            pid = int(os.path.basename(path)[len(cls.PREFIX):].split("-", 1)[0])
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (ValueError, OSError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        # The pid lives: it may be between creating the dir and locking it.
        return False


def replace_tree(staged: str, path: str) -> None:
    """Put `staged` at `path` in place of what is there (repairing a valid path).

    A file or symlink is replaced by one atomic rename. A directory cannot be
    renamed over, so the old tree is first moved into a temp dir (deleted
    afterwards): for that instant `path` is missing, never half-written.
    The caller holds the path's lock; `staged` is on the store's filesystem.
    """
    store_dir = os.path.dirname(path)
    with TempDir(store_dir) as trash:
        old = os.path.join(trash.path, "old")
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)  # renaming a dir to another parent rewrites its '..'
            io_call(f"cannot move '{path}' aside", os.rename, path, old)
        elif os.path.isdir(staged) and os.path.lexists(path):
            io_call(f"cannot move '{path}' aside", os.rename, path, old)
        try:
            io_call(f"cannot move a new '{path}' into place", rename_tree, staged, path)
        except RunnerError:
            if os.path.lexists(old) and not os.path.lexists(path):
                os.rename(old, path)  # keep the (broken) old tree rather than nothing
            raise


def stage_tree(src: str, staged: str, exclude: Exclude | None) -> tuple[Hash, int]:
    copy_tree(src, staged, exclude)
    canonicalise(staged)
    return nar.hash_path(staged)


def write_text(path: str, data: bytes) -> None:
    """A text file as canonicalise leaves it (0444, mtime 1), without walking it again."""
    remove_tree(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.utime(fd, (MTIME_STORE, MTIME_STORE))
    finally:
        os.close(fd)


def stage_bytes(data: bytes, staged: str) -> tuple[Hash, int]:
    with open(staged, "wb") as f:
        f.write(data)
    canonicalise(staged)
    return nar.hash_path(staged)


def copy_tree(src: str, dest: str, exclude: Exclude | None) -> None:
    """Copy files, dirs and symlinks (contents and the owner's exec bit only)."""
    stack = [(src, dest, "")]
    while stack:
        from_path, to_path, rel = stack.pop()
        st = os.lstat(from_path)
        check_file_type(from_path, st)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(from_path), to_path)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(from_path, to_path, follow_symlinks=False)
            os.chmod(to_path, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
        else:
            os.mkdir(to_path, 0o755)
            with os.scandir(from_path) as entries:
                for entry in entries:
                    child = rel + entry.name
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if exclude is not None and exclude(child + "/" if is_dir else child):
                        continue
                    stack.append((entry.path, os.path.join(to_path, entry.name),
                                  child + "/" if is_dir else child))
