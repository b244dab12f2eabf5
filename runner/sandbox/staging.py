"""The host side of the sandboxed store dir: prepare it, then hand the outputs over.

Inside the sandbox the store dir is a writable bind of a per-build staging dir
`<store>/.sandbox-<first output>` (same filesystem as the store, so outputs
move by rename). Closure paths are bound read-only on top of it. When the
build has ended, whatever it created at its output paths is renamed to the
real output paths and the staging dir is removed. A staging dir left behind
by a killed build is cleared when the same derivation is built again.
"""

from __future__ import annotations

import errno
import os
import time

from runner.sandbox.plan import SandboxPlan
from runner.store.canonicalise import remove_tree, rename_tree

# What removing a tree that dying processes still write into can meet.
_RACING = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY)


def prepare(plan: SandboxPlan) -> None:
    """Fresh staging dir; as root, let the build user write it and the build dir."""
    remove_tree(plan.staging_dir)
    os.mkdir(plan.staging_dir, 0o755)
    os.chmod(plan.staging_dir, 0o755)
    if not plan.user_namespace:
        os.chown(plan.staging_dir, plan.build_uid, plan.build_gid)
        chown_tree(plan.build_dir, plan.build_uid, plan.build_gid)


def collect(plan: SandboxPlan) -> None:
    """Move created outputs to their real paths, owned by the invoking user."""
    for out in plan.outputs:
        made = os.path.join(plan.staging_dir, os.path.basename(out))
        if not os.path.lexists(made):
            continue
        if os.path.lexists(out):
            remove_tree(out)
        rename_tree(made, out)
        if not plan.user_namespace:
            chown_tree(out, plan.owner_uid, plan.owner_gid)
    remove_tree(plan.staging_dir)


def discard(plan: SandboxPlan, patience: float = 5.0) -> None:
    """Remove the staging dir a killed supervisor could not collect (its outputs are lost).

    The build's last processes may still be dying and writing into it, so a
    directory that refills while being removed is retried for `patience`
    seconds. Best effort: what stays is cleared when the derivation is built again.
    """
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
    os.lchown(path, uid, gid)
    if os.path.islink(path) or not os.path.isdir(path):
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
