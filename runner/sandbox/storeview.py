"""The store dir inside the sandbox: the outputs' staging dir plus the input closure.

The rules of the view; `root.py` compiles them into the root's steps (made
while the scratch tmpfs is the root and the host root is at `OLD`). The store
dir must be writable (the outputs land in the staging dir, on the store's own
disk) and show each input read-only at its own path, and nothing else of the
store.

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
  submounts too, in the root's one sealing pass, `root.compile_root`); a bind
  mount takes the flags of the mount it comes from, so every input bound from
  there is read-only already. `INPUTS` and the
  stubs vanish with the scratch tmpfs when the new root is pivoted in.

Input symlinks are recreated, not bound.
"""

from __future__ import annotations

import os

from runner.sandbox.steps import Step

INPUTS = "/inputs"
STUBS = "/stubs"
OVERLAY, STUBS_ON_DISK = "overlay", "stubs"
_UNSAFE = (",", ":", "\\")  # overlay's option syntax cannot carry these
# In runner's environment (tests, bench/): "overlay" or "stubs" for every build,
# whatever its number of inputs (the overlay still falls back when it cannot mount).
STORE_VIEW_ENV = "RUNNER_SANDBOX_STORE_VIEW"
# Below this many inputs (or stubs to change in a kept staging dir: slots.py) stubs on
# disk cost less than the overlay's own disk work: its work dir and the four entries
# overlayfs makes in it (work, incompat, volatile, dirty), each made and later deleted.
OVERLAY_FROM = 5


def wants_overlay(inputs: int) -> bool:
    """Runner side (executor, staging): try the overlay for a build with this many inputs?"""
    forced = os.environ.get(STORE_VIEW_ENV)
    return forced == OVERLAY or (forced != STUBS_ON_DISK and inputs >= OVERLAY_FROM)


def unsafe_for_overlay(*paths: str) -> bool:
    """Whether overlay's option syntax cannot carry one of these paths."""
    return any(c in p for p in paths for c in _UNSAFE)


def sealed_with(step: Step) -> list[str]:
    """What the root's one sealing pass must also make read-only for this store step:
    the store bound at `INPUTS` (its submounts come writable), when there are inputs.
    One pass reads the mount table once; a pass of its own cost a second read."""
    return [INPUTS] if step.inputs else []
