"""Path locks: an exclusive lock on `<path>.lock` per store path, across processes.

We use `flock` rather than POSIX `fcntl` record locks: an flock belongs to the
open file, so two lockers in one process exclude each other as two processes
do (the worker's goals rely on that), and closing an unrelated descriptor of
the same file does not silently drop the lock. The kernel releases both kinds
when the holder dies, even by SIGKILL.

A releasing holder unlinks its lock file and then writes one byte into it (as
Nix does). A waiter that was blocked on the old file then wakes up holding a
lock on a file nobody else will ever open again; it notices that the path no
longer names the file it locked and retries on a fresh one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable
from types import TracebackType

from runner.errors import RunnerError
from runner.store.layout import LOCK_SUFFIX

_STALE_MARK = b"d"


def lock_file_path(path: str) -> str:
    return path + LOCK_SUFFIX


def is_locked(path: str) -> bool:
    """Does anyone hold `path`'s lock right now? (Creates no lock file, takes no lock.)"""
    try:
        fd = os.open(lock_file_path(path), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise RunnerError(f"cannot open lock file '{lock_file_path(path)}': {e.strerror}",
                          reason="lock") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock we may have taken
    return False


class PathLocks:
    """Exclusive locks on a set of paths, acquired in sorted order to avoid deadlock.

    `PathLocks(paths)` blocks until all are held; `PathLocks().try_lock(paths)`
    returns False (holding nothing) if any is taken. Release with `unlock()` or
    by leaving the `with` block.
    """

    def __init__(self, paths: Iterable[str] = (), *, delete: bool = True) -> None:
        self.delete = delete
        self._held: list[tuple[int, str]] = []
        paths = list(paths)
        if paths:
            self.lock(paths)

    @property
    def paths(self) -> list[str]:
        return [lock_path[: -len(LOCK_SUFFIX)] for _, lock_path in self._held]

    @property
    def fds(self) -> tuple[int, ...]:
        """The lock files' descriptors: a child that inherits them keeps the locks held
        for as long as it lives, even if this process dies (flock follows the open file)."""
        return tuple(fd for fd, _ in self._held)

    def lock(self, paths: Iterable[str], *, wait: bool = True) -> bool:
        """Lock every path; with `wait=False`, give up (holding nothing) on the first busy one."""
        if self._held:
            raise RunnerError("internal: PathLocks already holds locks", reason="lock")
        for path in sorted(set(paths)):
            fd = _acquire(lock_file_path(path), wait)
            if fd is None:
                self.unlock()
                return False
            self._held.append((fd, lock_file_path(path)))
        return True

    def try_lock(self, paths: Iterable[str]) -> bool:
        return self.lock(paths, wait=False)

    def unlock(self) -> None:
        held, self._held = self._held, []
        for fd, lock_path in held:
            try:
                if self.delete:
                    # Unlink first, then mark: a waiter on this inode must see it stale.
                    with contextlib.suppress(OSError):
                        os.unlink(lock_path)
                    os.write(fd, _STALE_MARK)
            finally:
                os.close(fd)

    def __enter__(self) -> PathLocks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlock()


def _acquire(lock_path: str, wait: bool) -> int | None:
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RunnerError(f"cannot open lock file '{lock_path}': {e.strerror}",
                              reason="lock") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
                fcntl.flock(fd, fcntl.LOCK_EX)
            if not _is_stale(fd, lock_path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _is_stale(fd: int, lock_path: str) -> bool:
    """True when `lock_path` no longer names the file we locked (its holder deleted it)."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return True
    try:
        current = os.stat(lock_path)
    except FileNotFoundError:
        return True
    if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
        return True
    if st.st_size != 0:
        # A stale mark on a still-linked file: its holder could not unlink it.
        # We hold the lock on the file the path names, so it is ours to reset.
        os.ftruncate(fd, 0)
    return False
