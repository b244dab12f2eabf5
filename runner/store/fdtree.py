"""Walking a directory tree by descriptors, never by path (docs/security.md, classes 3 and 5).

Every tree operation root performs on a tree that someone else may write (a
builder's output, a build dir) must not follow a symlink swapped in mid-walk,
and must not fail on trees deeper than PATH_MAX or the recursion limit.
`Walk` therefore holds exactly one directory descriptor at a time: it opens
each child with `O_NOFOLLOW | O_DIRECTORY` relative to its parent, checks
that what it opened is what it `lstat`ed, and climbs back with `..` relative
to the child, checking the parent's identity again (a directory moved away
mid-walk stops the walk with an error instead of escaping the tree). Memory is
one name list per level; no recursion, no path longer than one name.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

Kind = Literal["enter", "file", "leave"]


@dataclass
class Event:
    """`enter`: `fd` is the directory just opened (`name` in its parent);
    `file`: a non-directory `name` in the directory `fd`;
    `leave`: the directory `name`, all of whose entries were visited, in the
    directory `fd` (its parent; the walked directory's own fd is closed)."""

    kind: Kind
    fd: int
    name: str
    st: os.stat_result
    top: bool = False  # the walked tree's root itself


class TreeMoved(OSError):
    """A directory changed identity under the walk (renamed, replaced)."""


def ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def open_dir(name: str | bytes, dir_fd: int, st: os.stat_result, *,
             make_readable: bool) -> int:
    """Open the directory `name` (already lstat'ed as `st`) without following symlinks.

    `make_readable`: a directory of ours that we may not list (mode 0000: a
    non-root builder can leave one) gets u+rwx first, via an O_PATH descriptor.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not make_readable or st.st_uid != os.geteuid():
            raise
        pfd = os.open(name, PATH_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            if ident(os.fstat(pfd)) != ident(st):
                raise TreeMoved(errno.ESTALE, "directory replaced during the walk",
                                os.fsdecode(name)) from None
            chmod_fd(pfd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
            fd = os.open(".", DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)
    if ident(os.fstat(fd)) != ident(st):
        os.close(fd)
        raise TreeMoved(errno.ESTALE, "directory replaced during the walk", os.fsdecode(name))
    return fd


def up(fd: int, parent: tuple[int, int], where: str = "") -> int:
    """The parent of the directory open as `fd`, which is closed once the parent is
    known to be the directory `parent` identifies (on error `fd` stays open)."""
    above = os.open("..", DIR_FLAGS, dir_fd=fd)
    if ident(os.fstat(above)) != parent:
        os.close(above)
        raise TreeMoved(errno.ESTALE, "directory moved during the walk", where or None)
    os.close(fd)
    return above


def byte_names(fd: int) -> list[bytes]:
    """The entries of the directory `fd` as bytes (`listdir` of an fd gives str), for
    callers that must order them by bytes as NARs do."""
    return [os.fsencode(n) for n in os.listdir(fd)]


def chmod_fd(fd: int, mode: int) -> None:
    """chmod through a descriptor, O_PATH ones included (no name is resolved again)."""
    try:
        os.fchmod(fd, mode)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        os.chmod(f"/proc/self/fd/{fd}", mode)


def utime_fd(fd: int, mtime_ns: int, atime_ns: int) -> None:
    try:
        os.utime(fd, ns=(atime_ns, mtime_ns))
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        os.utime(f"/proc/self/fd/{fd}", ns=(atime_ns, mtime_ns))


class Walk:
    """Depth-first walk of `name` in the directory `dir_fd`, by descriptors.

    Directories are listed only after their `enter` event has been consumed,
    so the consumer may open up a directory's mode before it is read. The
    descriptors in events are valid only until the next event.
    """

    def __init__(self, dir_fd: int, name: str, *, make_readable: bool = False,
                 display: str = "") -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.make_readable = make_readable
        self.display = display or name
        self._names: list[str] = []  # the directories entered, below the top
        self._bytes = 0  # length of "/" + "/".join(self._names), in bytes

    def path_of(self, ev: Event) -> str:
        """`ev`'s path for messages (may exceed PATH_MAX; never opened)."""
        if ev.top:
            return self.display
        if ev.kind == "file":
            return "/".join([self.display, *self._names, ev.name])
        return "/".join([self.display, *self._names])

    def depth(self, ev: Event) -> int:
        """How many levels below the top `ev` is."""
        return 0 if ev.top else len(self._names) + (ev.kind == "file")

    def depth_bytes(self, ev: Event) -> int:
        """The length in bytes that `ev`'s path adds to the top's path."""
        if ev.top:
            return 0
        extra = len(os.fsencode(ev.name)) + 1 if ev.kind == "file" else 0
        return self._bytes + extra

    def __iter__(self) -> Iterator[Event]:
        st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            yield Event("file", self.dir_fd, self.name, st, top=True)
            return
        cur = open_dir(self.name, self.dir_fd, st, make_readable=self.make_readable)
        try:
            yield Event("enter", cur, self.name, st, top=True)
            stack: list[tuple[str, os.stat_result, list[str]]] = [
                (self.name, st, sorted(os.listdir(cur), reverse=True))]
            while True:
                _, _, pending = stack[-1]
                if pending:
                    child = pending.pop()
                    cst = os.stat(child, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISDIR(cst.st_mode):
                        yield Event("file", cur, child, cst)
                        continue
                    fd = open_dir(child, cur, cst, make_readable=self.make_readable)
                    os.close(cur)
                    cur = fd
                    self._names.append(child)
                    self._bytes += len(os.fsencode(child)) + 1
                    yield Event("enter", cur, child, cst)
                    stack.append((child, cst, sorted(os.listdir(cur), reverse=True)))
                    continue
                name, dst, _ = stack.pop()
                if not stack:
                    yield Event("leave", self.dir_fd, name, dst, top=True)
                    return
                cur = up(cur, ident(stack[-1][1]), "/".join([self.display, *self._names]))
                self._bytes -= len(os.fsencode(self._names.pop())) + 1
                yield Event("leave", cur, name, dst)
        finally:
            os.close(cur)


def open_parent(path: str) -> tuple[int, str]:
    """A descriptor of `path`'s directory (trusted: store dir, build-dir parent) and
    `path`'s last component."""
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "not a tree below a directory", path)
    return os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), name


def components(walk: Walk, ev: Event) -> list[str]:
    """`ev`'s names from the walk's directory down (to reach it again with `reach`)."""
    if ev.top:
        return [walk.name]
    return [walk.name, *walk._names, ev.name] if ev.kind == "file" else [walk.name, *walk._names]


def reach(dir_fd: int, names: list[str]) -> int:
    """A descriptor of the directory `names` leads to from `dir_fd`, one O_NOFOLLOW
    step at a time (no path is ever longer than one name)."""
    fd = os.dup(dir_fd)
    try:
        for name in names:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", name)
            child = open_dir(name, fd, st, make_readable=False)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_data(src_fd: int, dst_fd: int) -> None:
    """Copy a whole file between descriptors: copy_file_range (reflinks on btrfs and
    XFS, in-kernel copy elsewhere), read/write where the kernel refuses."""
    try:
        while os.copy_file_range(src_fd, dst_fd, 1 << 30):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                           errno.EPERM):
            raise
    os.lseek(src_fd, 0, os.SEEK_SET)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    os.ftruncate(dst_fd, 0)
    while chunk := os.read(src_fd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]


def open_regular(name: str, dir_fd: int, st: os.stat_result) -> int:
    """Open a regular file (lstat'ed as `st`) for reading, refusing anything swapped in."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    if ident(os.fstat(fd)) != ident(st):
        os.close(fd)
        raise TreeMoved(errno.ESTALE, "file replaced during the walk", name)
    return fd


def disk_usage(path: str) -> int:
    """Bytes `path`'s tree occupies that deleting it would free (files linked elsewhere
    free nothing); 0 when it is gone. By descriptors, like every walk here: any depth."""
    try:
        parent_fd, name = open_parent(path)
    except FileNotFoundError:
        return 0
    total = 0
    try:
        for ev in Walk(parent_fd, name):
            if ev.kind == "enter" or (ev.kind == "file" and ev.st.st_nlink == 1):
                total += ev.st.st_blocks * 512
    except FileNotFoundError:
        pass
    finally:
        os.close(parent_fd)
    return total
