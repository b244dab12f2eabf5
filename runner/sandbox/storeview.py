"""The store dir inside the sandbox: the outputs' staging dir plus the input closure.

Runs in the builder's first process (`child.py`) while the scratch tmpfs is
the root and the host root is at `old`. The store dir must be writable (the
outputs land in the staging dir, on the store's own disk) and show each
input read-only at its own path, and nothing else of the store.

Each input is one bind mount on a mount point named like it. Two things keep
that cheap (docs/sandbox.md, "Cost"):

- The mount points are not made on the host disk. The store dir is an
  overlay whose upper layer is the staging store (disk: the outputs) and
  whose lower layer is a directory of stubs on the scratch tmpfs, one per
  input (a `mkdir` in memory); binding an input over a stub writes nothing.
  It is `volatile`: unmounting it (when the builder's namespace goes) does
  not sync the store's whole file system, which took long enough under load
  for runner to take the builder for one that closed its log and kept
  running.
  Where overlayfs cannot be mounted (not in the kernel, an upper file system
  it refuses, a path its option syntax cannot carry), the staging store is
  bound instead and the stubs are made in it, on disk (the way before 2026-12).
- No read-only remount per input. The host store is bound once, recursively,
  at `INPUTS` on the scratch tmpfs and made read-only, nosuid and nodev (its
  submounts too, in the root's one sealing pass, `child._make_root`); a bind
  mount takes the flags of the mount it comes from, so every input bound from
  there is read-only already. `INPUTS` and the
  stubs vanish with the scratch tmpfs when the new root is pivoted in.

Input symlinks are recreated, not bound.
"""

from __future__ import annotations

import os

from runner.sandbox import libc, trace
from runner.sandbox.mounts import remount
from runner.sandbox.steps import Step

INPUTS = "/inputs"
STUBS = "/stubs"
OVERLAY, STUBS_ON_DISK = "overlay", "stubs"
_UNSAFE = (",", ":", "\\")  # overlay's option syntax cannot carry these
# In runner's environment (tests, bench/): "overlay" or "stubs" for every build,
# whatever its number of inputs (the overlay still falls back when it cannot mount).
STORE_VIEW_ENV = "RUNNER_SANDBOX_STORE_VIEW"
# Below this many inputs stubs on disk cost less than the overlay's own disk work
# (its work dir, and the dir the kernel makes in it: two mkdirs and two rmdirs).
OVERLAY_FROM = 4


def wants_overlay(inputs: int) -> bool:
    """Runner side (executor, staging): try the overlay for a build with this many inputs?"""
    forced = os.environ.get(STORE_VIEW_ENV)
    return forced == OVERLAY or (forced != STUBS_ON_DISK and inputs >= OVERLAY_FROM)


def make(step: Step, target: str, old: str, *, user_namespace: bool,
         force_stubs: bool = False) -> str:
    """Make the store dir at `target` with a mount point per input (`bind_inputs`
    fills them); returns how (`OVERLAY` or `STUBS_ON_DISK`)."""
    upper, work = old + step.source, old + step.mount.data
    os.makedirs(target, exist_ok=True)
    if step.inputs:
        os.mkdir(INPUTS)
        libc.mount(old + step.mount.target, INPUTS, None, libc.MS_BIND | libc.MS_REC)
        remount(INPUTS, readonly=True, nodev=True)  # its submounts: `sealed_with`
    trace.mark("store-inputs-view")
    way = STUBS_ON_DISK
    if not force_stubs and not unsafe_for_overlay(upper, work):
        os.mkdir(STUBS)
        _stubs(STUBS, step.inputs)
        options = f"lowerdir={STUBS},upperdir={upper},workdir={work},volatile"
        try:
            libc.mount("overlay", target, "overlay", libc.MS_NOSUID | libc.MS_NODEV,
                       options + (",userxattr" if user_namespace else ""))
            way = OVERLAY
        except OSError:
            pass
    if way == STUBS_ON_DISK:
        libc.mount(upper, target, None, libc.MS_BIND | libc.MS_REC)
        remount(target, readonly=False, nodev=True)
        _stubs(target, step.inputs)
    trace.mark("store-" + way)
    return way


def unsafe_for_overlay(*paths: str) -> bool:
    """Whether overlay's option syntax cannot carry one of these paths."""
    return any(c in p for p in paths for c in _UNSAFE)


def sealed_with(step: Step) -> list[str]:
    """What the root's one sealing pass must also make read-only for this store step:
    the store bound at `INPUTS` (its submounts come writable), when there are inputs.
    One pass reads the mount table once; a pass of its own cost a second read."""
    return [INPUTS] if step.inputs else []


def bind_inputs(step: Step, target: str) -> None:
    """Bind each input over its stub in the store dir `make` made at `target`."""
    for entry in step.inputs:
        if entry[0] != "l":
            libc.mount(f"{INPUTS}/{entry[1:]}", f"{target}/{entry[1:]}", None,
                       libc.MS_BIND | libc.MS_REC)


def _stubs(where: str, inputs: tuple[str, ...]) -> None:
    for entry in inputs:
        kind, name = entry[0], entry[1:]
        if kind == "d":
            os.mkdir(f"{where}/{name}", 0o755)
        elif kind == "f":
            os.close(os.open(f"{where}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        else:
            name, _, link = name.partition("\0")
            os.symlink(link, f"{where}/{name}")
