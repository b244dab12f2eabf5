"""Walking directory trees by descriptor: one fd open whatever the depth.

Paths past PATH_MAX cannot be opened by name, and a stack of descriptors per
level runs into RLIMIT_NOFILE; so walkers hold the current directory only,
go down with openat and come back up through `..`, checking that `..` is
the directory they came from (a tree moved mid-walk is an error, not a
silent jump elsewhere).
"""

from __future__ import annotations

import errno
import os
import stat

Identity = tuple[int, int]  # (st_dev, st_ino)


def open_dir(name: bytes, dir_fd: int | None) -> int:
    """Open the directory `name` (relative to `dir_fd`), refusing a symlink."""
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


def up(fd: int, parent: Identity) -> int:
    """The parent of the directory open as `fd`, which is closed once the parent is
    known to be `parent` (on error `fd` stays open)."""
    above = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    if identity(os.fstat(above)) != parent:
        os.close(above)
        raise OSError(errno.ESTALE, "directory moved while walking it")
    os.close(fd)
    return above


def entries(fd: int) -> list[bytes]:
    """The names in the directory `fd` (as bytes: `listdir` gives str for an fd)."""
    return [os.fsencode(n) for n in os.listdir(fd)]


def remove_at(dir_fd: int, name: bytes) -> None:
    """Delete the tree `name` in `dir_fd` (a tree we created, so writable) without
    recursion; a missing `name` is not an error."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = open_dir(name, dir_fd)
    chain = [(name, identity(os.fstat(fd)))]
    try:
        while True:
            sub = None
            for entry in entries(fd):
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    sub = entry
                    break
                os.unlink(entry, dir_fd=fd)
            if sub is not None:
                child = open_dir(sub, fd)
                os.close(fd)
                fd = child
                chain.append((sub, identity(os.fstat(fd))))
                continue
            done, _ = chain.pop()
            if not chain:
                break
            fd = up(fd, chain[-1][1])
            os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_path(path: str | bytes) -> None:
    """`remove_at` by path (its parent must be reachable by name; the tree need not be)."""
    parent, name = os.path.split(os.fsencode(path).rstrip(b"/"))
    fd = open_dir(parent or b".", None)
    try:
        remove_at(fd, name)
    finally:
        os.close(fd)
