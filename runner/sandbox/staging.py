"""The host side of the sandboxed store dir: prepare it, then hand the outputs over.

Inside the sandbox the store dir is a writable bind of `<staging>/store`,
where `<staging>` = `<store>/.sandbox-<first output>` is a 0700 directory of
runner's user: no other local user can reach what the builder writes, even
if the builder opens its modes (a bind mount's source is reached without
traversing its host parents, so the builder itself is not hindered). Closure
paths are bound read-only on top of it.

When the build has ended, each output it created is *copied* into fresh
inodes (docs/security.md, class 1): a descriptor the builder kept or passed
on still points at the staging copy, which is deleted, never at what gets
registered. The copy is made inside `<staging>` and renamed into the store.
A staging dir left behind by a killed build is cleared when the same
derivation is built again (or by gc).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from runner.sandbox import slots, storeview
from runner.sandbox.plan import SandboxPlan
from runner.store import fdtree
from runner.store.canonicalise import check_file_type, remove_tree

# What removing a tree that dying processes still write into can meet.
_RACING = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY)

COPY_PREFIX = "copy-"
WORK = "work"


def prepare(plan: SandboxPlan, inputs: tuple[str, ...] | None = None) -> bool:
    """The staging dir; as root, let the build user write it and the build dir.

    With `inputs` (`Step.inputs`: the C spawn) a kept staging dir may be taken, its
    stubs made here (`slots.py`): then True. Else a fresh one, for the overlay or for
    stubs the child makes."""
    remove_tree(plan.staging_dir)
    made = inputs is not None and slots.take(plan, inputs)
    if not made:
        _mkdir_exactly(plan.staging_dir, 0o700)
        _mkdir_exactly(plan.staging_store, 0o755)
        if storeview.wants_overlay(len(plan.inputs)):
            os.mkdir(f"{plan.staging_dir}/{WORK}", 0o700)  # the overlay's work dir
        if not plan.user_namespace:
            os.chown(plan.staging_store, plan.build_uid, plan.build_gid)
    if not plan.user_namespace:
        chown_tree(plan.build_dir, plan.build_uid, plan.build_gid)
    return made


def remove(plan: SandboxPlan) -> None:
    """The build did not start: its staging dir goes, kept or not."""
    slots.forget(plan.staging_dir)
    remove_tree(plan.staging_dir)


def _mkdir_exactly(path: str, mode: int) -> None:
    """mkdir with exactly `mode`, whatever the umask; a chmod (an inode write on
    disk) only when the umask took bits away."""
    os.mkdir(path, mode)
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)


def collect(plan: SandboxPlan, remove: Callable[[str], object] = remove_tree) -> None:
    """Copy created outputs to their real paths, owned by the invoking user; then
    `remove` the staging dir (runner passes `trash.discard`: off its critical path)."""
    staging_fd = os.open(plan.staging_dir, fdtree.DIR_FLAGS)
    try:
        inner_fd = os.open("store", fdtree.DIR_FLAGS, dir_fd=staging_fd)
        store_fd = os.open(plan.store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for out in plan.outputs:
                name = os.path.basename(out)
                try:
                    os.stat(name, dir_fd=inner_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                copy = COPY_PREFIX + name
                owner = None if plan.user_namespace else (plan.owner_uid, plan.owner_gid)
                copy_tree(inner_fd, name, staging_fd, copy, owner, display=out)
                remove_tree(out)
                _rename_into(staging_fd, copy, store_fd, name)
        finally:
            os.close(inner_fd)
            os.close(store_fd)
    finally:
        os.close(staging_fd)
    remove(plan.staging_dir)


def _rename_into(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Move the copy into the store. Moving a directory rewrites its `..`, which
    needs write permission on it: a read-only one is opened up for the move (only
    its owner, runner's user, could use that moment), unless we are root."""
    st = os.stat(src, dir_fd=src_dir, follow_symlinks=False)
    opened = (stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IWUSR
              and os.geteuid() != 0)
    if opened:
        os.chmod(src, stat.S_IMODE(st.st_mode) | stat.S_IWUSR, dir_fd=src_dir)
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    if opened:
        os.chmod(dst, stat.S_IMODE(st.st_mode), dir_fd=dst_dir)


def copy_tree(src_dir: int, src_name: str, dst_dir: int, dst_name: str,
              owner: tuple[int, int] | None, display: str = "") -> None:
    """Copy the tree `src_name` into new inodes at `dst_name` (which must not exist).

    Only regular files, directories and symlinks are copied; contents go by
    `copy_file_range` (a reflink where the filesystem shares extents). Modes
    keep their permission bits (no set-id bits); `owner` (root only) owns
    every new inode. Walks by descriptors on both sides, as deep as it goes.
    """
    walk = fdtree.Walk(src_dir, src_name, make_readable=os.geteuid() != 0,
                       display=display or src_name)
    dst = os.dup(dst_dir)
    try:
        for ev in walk:
            check_file_type(walk.path_of(ev), ev.st)
            name = dst_name if ev.top else ev.name
            mode = stat.S_IMODE(ev.st.st_mode) & 0o777
            if ev.kind == "enter":
                os.mkdir(name, 0o700, dir_fd=dst)
                child = os.open(name, fdtree.DIR_FLAGS, dir_fd=dst)
                os.close(dst)
                dst = child
            elif ev.kind == "leave":
                os.fchmod(dst, mode)
                if owner is not None:
                    os.fchown(dst, *owner)
                up = os.open("..", fdtree.DIR_FLAGS, dir_fd=dst)
                os.close(dst)
                dst = up
            elif stat.S_ISLNK(ev.st.st_mode):
                os.symlink(os.readlink(ev.name, dir_fd=ev.fd), name, dir_fd=dst)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=dst, follow_symlinks=False)
            else:
                _copy_file(ev, name, dst, mode, owner)
    finally:
        os.close(dst)


def _copy_file(ev: fdtree.Event, name: str, dst_dir: int, mode: int,
               owner: tuple[int, int] | None) -> None:
    try:
        src = fdtree.open_regular(ev.name, ev.fd, ev.st)
    except PermissionError:  # a file of ours without read permission (rootless)
        pfd = os.open(ev.name, fdtree.PATH_FLAGS, dir_fd=ev.fd)
        try:
            fdtree.chmod_fd(pfd, mode | stat.S_IRUSR)
            src = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        if fdtree.ident(os.fstat(src)) != fdtree.ident(ev.st):
            os.close(src)
            raise fdtree.TreeMoved(errno.ESTALE, "file replaced during the copy",
                                   ev.name) from None
    try:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dst_dir)
        try:
            fdtree.copy_data(src, out)
            if owner is not None:
                os.fchown(out, *owner)
            os.fchmod(out, mode)
        finally:
            os.close(out)
    finally:
        os.close(src)


def discard(plan: SandboxPlan, patience: float = 5.0) -> None:
    """Remove the staging dir a killed supervisor could not collect (its outputs are lost).

    The build's last processes may still be dying and writing into it, so a
    directory that refills while being removed is retried for `patience`
    seconds. Best effort: what stays is cleared when the derivation is built again.
    """
    slots.forget(plan.staging_dir)
    deadline = time.monotonic() + patience
    while True:
        try:
            remove_tree(plan.staging_dir)
            return
        except OSError as e:
            if e.errno not in _RACING or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def chown_tree(path: str, uid: int, gid: int) -> None:
    """lchown a whole tree, by descriptors: a symlink swapped in is never followed."""
    parent_fd, name = fdtree.open_parent(path)
    try:
        for ev in fdtree.Walk(parent_fd, name):
            if ev.kind == "enter":
                os.fchown(ev.fd, uid, gid)
            elif ev.kind == "file":
                os.chown(ev.name, uid, gid, dir_fd=ev.fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)

