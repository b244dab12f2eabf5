"""Staging dirs kept from one build to the next, with the input stubs in them.

Making an inode is the costly part of a sandboxed build on some disks: ext4
without a journal (this project's CI) skips, at every allocation, each inode of
the group freed in the last minutes, so a run's own deletions make each new
`mkdir` dearer (docs/sandbox.md, "Inodes"). A build's staging dir, its store
dir and a mount point per input (or the overlay's work dir and the four
entries overlayfs makes in it) were most of a sandboxed build's system time.

So, as with build dirs (`runner.build.build_dirs`), a C-spawn build's staging
dir is kept for this process's next build in the same store: its store dir is
emptied of everything but the stubs runner made (each checked by inode), and
the next build removes the stubs it does not want and makes the missing ones
before it starts (`take`). A node of a chain makes one stub, not one per
input, and no overlay. A stub made is an investment (closures recur: a
chain's or a layer's grow, a toolchain's is shared), a stale one removed is
waste: a build that would remove `STALE_MAX` or more stubs starts from a new
empty dir instead, and one that would make more than `NEW_MAX` takes a fresh
staging dir and the overlay.

A spare is `<store>/.tmp-<pid>-spare-<n>` (gc removes it once its runner has
gone); `take` renames it to the build's `.sandbox-<key>`, `give_back` back.
The builder only ever reaches the store dir inside (the staging dir is
runner's, 0700), and every process of the build is gone when its dir is
given back; the stubs are covered by the inputs' bind mounts while it runs.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
from dataclasses import dataclass, field

from runner.sandbox import storeview
from runner.sandbox.plan import SandboxPlan
from runner.store import fdtree, trash
from runner.store.canonicalise import remove_at, remove_tree
from runner.store.layout import TEMP_DIR_PREFIX

STORE = "store"  # a spare's store dir: `plan.staging_store` once taken
KEEP = 4  # spares per store dir; more builds at once than that make fresh dirs
# The overlay makes `storeview.OVERLAY_FROM` inodes and deletes as many after each build;
# removing a stub is one such operation, done only to hide it again.
STALE_MAX = 2 * storeview.OVERLAY_FROM
NEW_MAX = 100  # stubs made at most for one build: their inodes may cost ~1 ms each


@dataclass
class _Slot:
    path: str
    stubs: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (entry, ino)


_lock = threading.Lock()
_spares: dict[str, list[_Slot]] = {}  # store dir -> spares
_taken: dict[str, _Slot] = {}  # staging dir -> the slot a running build uses
_names = itertools.count()


def name_of(entry: str) -> str:
    """The store path name of a `Step.inputs` entry ("d<name>", "f<name>", "l<name>\\0<target>")."""
    return entry[1:].partition("\0")[0]


def take(plan: SandboxPlan, entries: tuple[str, ...]) -> bool:
    """Make `plan.staging_dir` from a spare (or afresh) with a stub per input in its
    store dir: True. False (nothing made): the build should use the overlay."""
    wanted = {name_of(e): e for e in entries}
    forced = os.environ.get(storeview.STORE_VIEW_ENV)
    with _lock:
        spares = _spares.get(plan.store_dir, [])
        slot = min(spares, key=lambda s: _cost(*_changes(s, wanted)), default=None)
        if slot is not None:
            spares.remove(slot)
    new, stale = _changes(slot, wanted)
    if slot is not None and stale >= STALE_MAX and forced != storeview.STUBS_ON_DISK:
        _keep(plan.store_dir, slot)  # for a later build like its last one
        slot, new, stale = None, len(wanted), 0
    if forced == storeview.OVERLAY or (forced != storeview.STUBS_ON_DISK and new > NEW_MAX):
        if slot is not None:
            _keep(plan.store_dir, slot)
        return False
    if slot is not None:
        try:
            os.rename(slot.path, plan.staging_dir)
            slot.path = plan.staging_dir
        except OSError:  # gone or unusable: start afresh, drop what is left of it
            trash.discard(slot.path)
            slot = None
    if slot is None:
        os.mkdir(plan.staging_dir, 0o700)
        os.mkdir(plan.staging_store, 0o755)
        slot = _Slot(plan.staging_dir)
    with _lock:
        _taken[plan.staging_dir] = slot
    fd = os.open(plan.staging_store, fdtree.DIR_FLAGS)
    try:
        for name in [n for n, (e, _) in slot.stubs.items() if wanted.get(n) != e]:
            remove_at(fd, name)
            del slot.stubs[name]
        for name, entry in wanted.items():
            if name not in slot.stubs:
                slot.stubs[name] = (entry, _make(fd, name, entry))
        os.fchmod(fd, 0o755)  # the last builder may have changed it
        if not plan.user_namespace:
            os.fchown(fd, plan.build_uid, plan.build_gid)
    finally:
        os.close(fd)
    return True


def give_back(plan: SandboxPlan) -> bool:
    """After the outputs are collected: keep the staging dir as a spare (emptied of all
    but its stubs on the trash thread). False: it was not one of ours."""
    with _lock:
        slot = _taken.pop(plan.staging_dir, None)
    if slot is None:
        return False
    aside = os.path.join(plan.store_dir, f"{TEMP_DIR_PREFIX}{os.getpid()}-spare-{next(_names)}")
    try:
        os.rename(plan.staging_dir, aside)
    except OSError:
        trash.discard(plan.staging_dir)
        return True
    slot.path = aside
    trash.later(lambda: _keep_emptied(plan.store_dir, slot))
    return True


def forget(staging_dir: str) -> None:
    """A build whose staging dir is removed, not given back (killed, failed set-up)."""
    with _lock:
        _taken.pop(staging_dir, None)


def release(store_dir: str | None = None) -> None:
    """Hand every spare (of `store_dir`, or of every store) to the trash thread (end of a
    run, exit); one still being emptied there is waited for. A caller about to delete
    the store dir itself must `trash.drain()` after this."""
    trash.drain()
    with _lock:
        if store_dir is None:
            spares = [s for ss in _spares.values() for s in ss]
            _spares.clear()
        else:
            spares = _spares.pop(store_dir, [])
    for slot in spares:
        trash.discard(slot.path)


def _changes(slot: _Slot | None, wanted: dict[str, str]) -> tuple[int, int]:
    """(stubs to make, stubs to remove) to turn `slot` into one for `wanted`."""
    if slot is None:
        return len(wanted), 0
    same = sum(1 for n, (e, _) in slot.stubs.items() if wanted.get(n) == e)
    return len(wanted) - same, len(slot.stubs) - same


def _cost(new: int, stale: int) -> int:
    return new + 2 * stale


def _keep(store_dir: str, slot: _Slot) -> None:
    with _lock:
        spares = _spares.setdefault(store_dir, [])
        if len(spares) < KEEP:
            spares.append(slot)
            return
    trash.discard(slot.path)


def _keep_emptied(store_dir: str, slot: _Slot) -> None:
    try:
        _empty(slot)
    except Exception:
        trash.discard(slot.path)  # not kept; nothing of it stays behind either
        raise
    _keep(store_dir, slot)


def _empty(slot: _Slot) -> None:
    """Everything in the spare but its intact stubs goes: outputs, what the builder left."""
    for name in os.listdir(slot.path):
        if name != STORE:
            remove_tree(os.path.join(slot.path, name))
    fd = os.open(os.path.join(slot.path, STORE), fdtree.DIR_FLAGS)
    try:
        present = set()
        with os.scandir(fd) as entries:  # names, inode numbers and types: no stat each
            for e in entries:
                present.add(e.name)
                stub = slot.stubs.get(e.name)
                if stub is None or not _intact(fd, e, stub):
                    slot.stubs.pop(e.name, None)
                    remove_at(fd, e.name)  # a stub, or whatever took its place
        for name in slot.stubs.keys() - present:
            del slot.stubs[name]
    finally:
        os.close(fd)


def _intact(fd: int, e: os.DirEntry[str], stub: tuple[str, int]) -> bool:
    """The stub runner made. A bind mount covered a directory or file stub while the
    builder ran; a symlink it could replace (its inode number may even come back), so
    its target is read again."""
    entry, ino = stub
    if entry[0] == "l":
        return e.is_symlink() and os.readlink(e.name, dir_fd=fd) == entry.partition("\0")[2]
    if e.is_symlink():
        return False
    return e.inode() == ino and (e.is_dir() if entry[0] == "d" else e.is_file())


def _make(fd: int, name: str, entry: str) -> int:
    if entry[0] == "d":
        os.mkdir(name, 0o755, dir_fd=fd)
    elif entry[0] == "f":
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=fd))
    else:
        os.symlink(entry.partition("\0")[2], name, dir_fd=fd)
    return os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino


atexit.register(release)
