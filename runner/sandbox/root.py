"""The sandbox's root as a list of steps: one compilation, run by C or by Python.

`compile_root` turns a build's resolved mounts (`Step`s) into the steps that
assemble its root: a scratch tmpfs pivoted in with the host root moved under
it at `OLD`, the new root built at `NEW` from `OLD` sources (the store dir by
`storeview`'s rules: an overlay over stubs, else stubs on disk), sealed
read-only, the inputs bound last, then pivoted in with the host detached.
The C spawn (`_spawn.c`, via `native.compile_program`) runs the list after
its clone; the Python way (`child.py`) runs the same list with `interpret.py`.
So what a build can see is written once, here.

A step is an op number (the same in `_spawn.c`) and its arguments: ints, or
strings that cross into C as bytes. `Program.encode` is `_spawn.c`'s wire
format: per step u32 op, u32 nargs, then per argument 'i' + i64 or 's' + u32
length + bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from runner.sandbox import libc, storeview
from runner.sandbox.steps import Step

SCRATCH = "/tmp"  # any host dir works; its tmpfs is gone once the new root is in
NEW = "/new"
OLD = "/old"

# The step numbers of _spawn.c.
(MOUNT, MOUNT_ELSE, MKDIRS, MKDIR, TOUCH, WRITE, PUT, SYMLINK, IDENT, REMOUNT, SEAL,
 PIVOT, CHDIR, UMOUNT, SETNS, HOSTNAME, LOOPBACK, IDS, NO_NEW_PRIVS, SECCOMP, PDEATHSIG, ALIVE,
 UMASK, SETSID, DUP2, TRACE, EXEC, STUBS, BINDS) = range(1, 30)

Arg = int | str | bytes
_HEAD = struct.Struct("<II").pack
_NUMBER = struct.Struct("<cq").pack
_TEXT = struct.Struct("<cI").pack


class Program:
    """A list of steps (`ops`); `encode` gives them in _spawn.c's wire format."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, tuple[Arg, ...]]] = []

    @property
    def count(self) -> int:
        return len(self.ops)

    def extend(self, other: Program) -> None:
        self.ops += other.ops

    def add(self, op: int, *args: Arg) -> None:
        self.ops.append((op, args))

    def encode(self) -> bytes:
        parts = []
        for op, args in self.ops:
            parts.append(_HEAD(op, len(args)))
            for a in args:
                if isinstance(a, int):
                    parts.append(_NUMBER(b"i", a))
                else:
                    data = a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a
                    parts.append(_TEXT(b"s", len(data)))
                    parts.append(data)
        return b"".join(parts)


def compile_root(steps: Sequence[Step], user_namespace: bool, tracing: bool) -> Program:
    """The steps that assemble the root (the module's docstring); `tracing` adds
    `trace` marks between the stages."""
    p = Program()
    p.add(MOUNT, "", "/", "", libc.MS_REC | libc.MS_PRIVATE, "")
    p.add(MOUNT, "tmpfs", SCRATCH, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0700")
    p.add(CHDIR, SCRATCH)
    p.add(MKDIR, NEW[1:], 0o755)
    p.add(MKDIR, OLD[1:], 0o755)
    p.add(PIVOT, ".", OLD[1:])
    p.add(CHDIR, "/")
    for step in steps:
        _step(p, step, user_namespace)
    if tracing:
        p.add(TRACE, "mounted")
    sealed = [NEW + s.mount.target for s in steps
              if s.mount.kind == "bind" and not s.mount.writable]
    for step in steps:
        if step.mount.kind == "store":
            sealed += storeview.sealed_with(step)
    p.add(SEAL, OLD + "/proc/self/mountinfo", *sealed)
    for step in steps:
        if step.mount.kind == "tmpfs" and not step.mount.writable:
            p.add(REMOUNT, NEW + step.mount.target, 1, 1)
    if tracing:
        p.add(TRACE, "sealed")
    for step in steps:  # the inputs last: the mount table stays short for sealing
        if step.mount.kind == "store" and step.inputs:
            p.add(BINDS, storeview.INPUTS, NEW + step.mount.target, _entries(step.inputs))
    if tracing:
        p.add(TRACE, "inputs-bound")
    p.add(CHDIR, NEW)
    p.add(PIVOT, ".", ".")
    p.add(UMOUNT, ".", libc.MNT_DETACH)
    p.add(CHDIR, "/")
    return p


def _step(p: Program, step: Step, user_namespace: bool) -> None:
    m = step.mount
    target = NEW + m.target if m.target != "/" else NEW
    nosuid_nodev = libc.MS_NOSUID | libc.MS_NODEV
    if m.kind == "tmpfs":
        p.add(MKDIRS, target, 0o777)
        p.add(MOUNT, "tmpfs", target, "tmpfs", nosuid_nodev, m.data)
    elif m.kind == "proc":
        p.add(MKDIRS, target, 0o777)
        p.add(MOUNT, "proc", target, "proc", nosuid_nodev | libc.MS_NOEXEC, "")
    elif m.kind == "devpts":
        p.add(MKDIRS, target, 0o777)
        p.add(MOUNT, "devpts", target, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620")
    elif m.kind == "file":
        p.add(WRITE, target, m.data)
    elif m.kind == "store":
        _store(p, step, target, user_namespace)
    elif m.kind == "symlink":
        p.add(SYMLINK, m.data, target)
    else:  # bind, device
        if step.is_dir:
            p.add(MKDIRS, target, 0o777)
        else:
            p.add(TOUCH, target)
        p.add(MOUNT, OLD + step.source, target, "", libc.MS_BIND | libc.MS_REC, "")
        if step.ident is not None:
            p.add(IDENT, target, step.ident[0], step.ident[1],
                  f"sandbox path '{m.source}' changed while being bound")
        p.add(REMOUNT, target, int(not m.writable), int(m.kind != "device"))


def _store(p: Program, step: Step, target: str, user_namespace: bool) -> None:
    """The store dir (storeview.py): an overlay of the staging store over stubs on the
    scratch tmpfs, else the staging store bound, with the stubs on disk (made here, or
    by runner already: `slots.py`)."""
    upper, work = OLD + step.source, OLD + step.mount.data
    p.add(MKDIRS, target, 0o777)
    if step.inputs:
        p.add(MKDIR, storeview.INPUTS, 0o755)
        p.add(MOUNT, OLD + step.mount.target, storeview.INPUTS, "",
              libc.MS_BIND | libc.MS_REC, "")
        p.add(REMOUNT, storeview.INPUTS, 1, 1)
    fallback = Program()
    fallback.add(MOUNT, upper, target, "", libc.MS_BIND | libc.MS_REC, "")
    fallback.add(REMOUNT, target, 0, 1)
    if step.stubs_made:
        p.extend(fallback)
        return
    _stubs(fallback, target, step.inputs)
    if step.stubs_on_disk or storeview.unsafe_for_overlay(upper, work):
        p.extend(fallback)
        return
    p.add(MKDIR, storeview.STUBS, 0o755)
    _stubs(p, storeview.STUBS, step.inputs)
    options = f"lowerdir={storeview.STUBS},upperdir={upper},workdir={work},volatile"
    p.add(MOUNT_ELSE, fallback.count, "overlay", target, "overlay",
          libc.MS_NOSUID | libc.MS_NODEV, options + (",userxattr" if user_namespace else ""))
    p.extend(fallback)


def _stubs(p: Program, where: str, inputs: tuple[str, ...]) -> None:
    if inputs:
        p.add(STUBS, where, _entries(inputs))


def _entries(inputs: tuple[str, ...]) -> str:
    """`Step.inputs` as one string for STUBS and BINDS: each entry NUL-terminated
    (a symlink's "l<name>\\0<target>" has its own NUL already)."""
    return "\0".join(inputs) + "\0"
