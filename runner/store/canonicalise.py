"""Store file metadata: what a tree looks like once it is in the store, and how to remove it.

As in Nix, store files are read-only (0444, or 0555 when the owner could
execute), every mtime is 1 (the epoch plus one second, so that tools treating
0 as "unknown" still work) and only regular files, directories and symlinks
exist. The NAR serialisation ignores everything else, so these are the only
facts about a tree that matter.
"""

from __future__ import annotations

import errno
import os
import stat

from runner.errors import RunnerError
from runner.store import fdtree

MTIME_STORE = 1


def check_file_type(path: str, st: os.stat_result) -> None:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise RunnerError(
            f"'{path}' has an unsupported file type (only regular files, directories and "
            "symlinks can be stored)",
            reason="bad-file-type",
        )


def canonicalise(path: str, from_uid: int | None = None, max_path: int = 0) -> None:
    """Make the tree at `path` read-only with mtime 1, owned by us.

    Walks by descriptors (`fdtree`): no symlink is followed, however the tree
    changes meanwhile, and depth is bounded by nothing but memory. A file
    hard-linked from outside the tree (an unsandboxed builder can
    `ln /etc/shadow $out`) is replaced by a private copy first, so we never
    chmod or re-time a file that is not ours. With `from_uid` (a build's
    uid), files owned by anyone else are refused outright. With `max_path`, a
    path of `max_path` bytes or more in the tree is refused (reason `path-too-long`).
    """
    euid = os.geteuid()
    parent_fd, name = fdtree.open_parent(path)
    try:
        linked: dict[tuple[int, int], list[tuple[list[str], os.stat_result]]] = {}
        walk = fdtree.Walk(parent_fd, name, display=path)
        for ev in walk:
            if ev.kind == "leave":
                continue
            check_file_type(walk.path_of(ev), ev.st)
            if max_path and len(path) + walk.depth_bytes(ev) >= max_path:
                raise RunnerError(f"a path in '{path}' is {max_path} bytes or longer (at depth "
                                  f"{walk.depth(ev)})", reason="path-too-long")
            if from_uid is not None and ev.st.st_uid != from_uid:
                raise RunnerError(f"invalid ownership on file '{walk.path_of(ev)}'",
                                  reason="bad-ownership")
            if stat.S_ISREG(ev.st.st_mode) and ev.st.st_nlink > 1:
                # Decided once every link inside the tree is known.
                linked.setdefault(fdtree.ident(ev.st), []).append(
                    (fdtree.components(walk, ev), ev.st))
                continue
            _canonicalise_at(ev.fd, ev.name, ev.st, euid, opened=ev.kind == "enter")
        for links in linked.values():
            outside = links[0][1].st_nlink > len(links)
            for names, st in links:
                dir_fd = fdtree.reach(parent_fd, names[:-1])
                try:
                    if outside:  # linked from outside: take a copy
                        st = _private_copy(dir_fd, names[-1])
                    _canonicalise_at(dir_fd, names[-1], st, euid, opened=False)
                finally:
                    os.close(dir_fd)
    finally:
        os.close(parent_fd)


def _private_copy(dir_fd: int, name: str) -> os.stat_result:
    before = os.fstat(dir_fd)
    os.fchmod(dir_fd, stat.S_IMODE(before.st_mode) | stat.S_IWUSR)
    try:
        tmp = name + ".canonicalise-copy"
        src = fdtree.open_regular(name, dir_fd, os.stat(name, dir_fd=dir_fd,
                                                        follow_symlinks=False))
        try:
            mode = stat.S_IMODE(os.fstat(src).st_mode) & 0o777
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fdtree.copy_data(src, dst)
                os.fchmod(dst, mode)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.fchmod(dir_fd, stat.S_IMODE(before.st_mode))
        os.utime(dir_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _canonicalise_at(fd: int, name: str, st: os.stat_result, euid: int, *,
                     opened: bool) -> None:
    """`opened`: `fd` is the directory itself; else `name` is an entry of directory `fd`.

    Symlinks are changed by name without following them; anything else through
    an O_PATH descriptor checked to be what was lstat'ed, never by name again.
    """
    if stat.S_ISLNK(st.st_mode):
        if st.st_mtime != MTIME_STORE:
            os.utime(name, (st.st_atime, MTIME_STORE), dir_fd=fd, follow_symlinks=False)
        if st.st_uid != euid:
            os.chown(name, euid, -1, dir_fd=fd, follow_symlinks=False)
        return
    own = fd if opened else _open_entry(fd, name)
    try:
        if not opened and fdtree.ident(os.fstat(own)) != fdtree.ident(st):
            raise fdtree.TreeMoved(errno.ESTALE, "file replaced during canonicalisation", name)
        mode = stat.S_IMODE(st.st_mode)
        if mode not in (0o444, 0o555):
            fdtree.chmod_fd(own, 0o555 if mode & stat.S_IXUSR else 0o444)
        if st.st_mtime != MTIME_STORE:
            fdtree.utime_fd(own, MTIME_STORE * 10**9, st.st_atime_ns)
        if st.st_uid != euid:
            # Only root gets here (copying someone else's files).
            _chown_fd(own, euid, -1)
    finally:
        if not opened:
            os.close(own)


def _open_entry(dir_fd: int, name: str) -> int:
    """A descriptor to change `name` through: readable when we may read it (fchmod and
    futimens work directly, the cheapest way), else O_PATH (changed via /proc)."""
    try:
        return os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, fdtree.PATH_FLAGS, dir_fd=dir_fd)


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _chown_fd(fd: int, uid: int, gid: int) -> None:
    try:
        os.fchown(fd, uid, gid)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        os.chown(f"/proc/self/fd/{fd}", uid, gid)


def remove_tree(path: str) -> int:
    """Delete a (possibly read-only) tree; a missing path is not an error. Returns the
    disk space freed (files still linked elsewhere free nothing).

    By descriptors, depth-first without recursion: a 100,000-deep tree goes
    like any other, and a symlink swapped in mid-walk is unlinked, never
    followed. Root never chmods anything (it needs no permission bits); anyone
    else opens up only their own read-only directories, before listing them.
    """
    try:
        parent_fd, name = fdtree.open_parent(path)
    except FileNotFoundError:
        return 0
    try:
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        return remove_at(parent_fd, name)
    finally:
        os.close(parent_fd)


def remove_at(dir_fd: int, name: str) -> int:
    """`remove_tree` of the entry `name` of the directory `dir_fd`."""
    euid = os.geteuid()
    freed = 0
    for ev in fdtree.Walk(dir_fd, name, make_readable=euid != 0):
        if ev.kind == "enter":
            mode = stat.S_IMODE(ev.st.st_mode)
            if euid != 0 and ev.st.st_uid == euid and mode & stat.S_IRWXU != stat.S_IRWXU:
                os.fchmod(ev.fd, mode | stat.S_IRWXU)
        elif ev.kind == "file":
            os.unlink(ev.name, dir_fd=ev.fd)
            if ev.st.st_nlink == 1:
                freed += ev.st.st_blocks * 512
        else:
            os.rmdir(ev.name, dir_fd=ev.fd)
            freed += ev.st.st_blocks * 512
    return freed


def rename_tree(src: str, dest: str) -> None:
    """`os.rename` for canonical (read-only) trees.

    Moving a directory to another parent rewrites its `..` entry, which needs
    write permission on the directory itself unless we are root; lift it for
    the move only.
    """
    try:
        os.rename(src, dest)
    except PermissionError:
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IWUSR:
            raise
        os.chmod(src, st.st_mode | stat.S_IWUSR)
        try:
            os.rename(src, dest)
        finally:
            os.chmod(dest if os.path.lexists(dest) else src, stat.S_IMODE(st.st_mode))
