"""Store file metadata: what a tree looks like once it is in the store, and how to remove it.

As in Nix, store files are read-only (0444, or 0555 when the owner could
execute), every mtime is 1 (the epoch plus one second, so that tools treating
0 as "unknown" still work) and only regular files, directories and symlinks
exist. The NAR serialisation ignores everything else, so these are the only
facts about a tree that matter.
"""

from __future__ import annotations

import os
import shutil
import stat

from runner.errors import RunnerError

MTIME_STORE = 1


def check_file_type(path: str, st: os.stat_result) -> None:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise RunnerError(
            f"'{path}' has an unsupported file type (only regular files, directories and "
            "symlinks can be stored)",
            reason="bad-file-type",
        )


def canonicalise(path: str, from_uid: int | None = None) -> None:
    """Make the tree at `path` read-only with mtime 1, owned by us.

    A file hard-linked from outside the tree (an unsandboxed builder can
    `ln /etc/shadow $out`) is replaced by a private copy first, so we never
    chmod or re-time a file that is not ours. With `from_uid` (a build's
    uid), files owned by anyone else are refused outright.
    """
    euid = os.geteuid()
    linked: dict[tuple[int, int], list[tuple[str, os.stat_result]]] = {}
    stack = [path]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        check_file_type(current, st)
        if from_uid is not None and st.st_uid != from_uid:
            raise RunnerError(f"invalid ownership on file '{current}'", reason="bad-ownership")
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            linked.setdefault((st.st_dev, st.st_ino), []).append((current, st))
            continue  # decided once every link inside the tree is known
        _canonicalise_one(current, st, euid)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack.extend(entry.path for entry in entries)
    for links in linked.values():
        if links[0][1].st_nlink > len(links):  # linked from outside: take a copy
            links = [(p, _private_copy(p)) for p, _ in links]
        for current, st in links:
            _canonicalise_one(current, st, euid)


def _private_copy(path: str) -> os.stat_result:
    parent = os.path.dirname(path)
    before = os.lstat(parent)
    os.chmod(parent, stat.S_IMODE(before.st_mode) | stat.S_IWUSR)
    try:
        tmp = path + ".canonicalise-copy"
        shutil.copy2(path, tmp, follow_symlinks=False)
        os.replace(tmp, path)
    finally:
        os.chmod(parent, stat.S_IMODE(before.st_mode))
        os.utime(parent, ns=(before.st_atime_ns, before.st_mtime_ns))
    return os.lstat(path)


def _canonicalise_one(path: str, st: os.stat_result, euid: int) -> None:
    is_link = stat.S_ISLNK(st.st_mode)
    if not is_link:
        mode = stat.S_IMODE(st.st_mode)
        if mode not in (0o444, 0o555):
            os.chmod(path, 0o555 if mode & stat.S_IXUSR else 0o444)
    if st.st_mtime != MTIME_STORE:
        os.utime(path, (st.st_atime, MTIME_STORE), follow_symlinks=False)
    if st.st_uid != euid:
        # Only root gets here (copying someone else's files); symlinks too.
        os.lchown(path, euid, -1)


def remove_tree(path: str) -> None:
    """Delete a (possibly read-only) store tree; a missing path is not an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    # Read-only directories forbid unlinking their entries: open them up first,
    # each before os.walk lists it.
    os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


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
