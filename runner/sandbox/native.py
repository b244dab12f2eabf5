"""The builder's start without Python in between: the plan compiled for `_spawn.c`.

The fork server and supervisor (`forkserver.py`, `supervisor.py`) cost two
process starts from Python per build, each copying on write a part of an
interpreter, plus the root's ~250 system calls made from Python. Where the C
extension `runner.sandbox._spawn` is built (setup.py; it is optional), runner
instead clones the builder itself, straight into its namespaces, sharing
runner's memory until the exec (CLONE_VM | CLONE_VFORK, as posix_spawn):

    runner thread ── clone(CLONE_NEW*) ──▶ builder (PID 1 of its PID namespace)

What the builder does before its exec is `compile_program`'s list of steps,
the same root `child.py` assembles. No supervisor: runner's thread is the
builder's parent, reaps it, and copies the outputs out of the staging dir
itself (`ServedProcess`'s `on_exit`, off the event loop). The builder writes
its own user-namespace maps (one line mapping runner's uid, which a process
may do for itself).
"""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Sequence
from types import ModuleType

from runner.sandbox import libc, seccomp, storeview, trace
from runner.sandbox.child import NEW, OLD, SCRATCH
from runner.sandbox.plan import SandboxPlan, exec_candidates
from runner.sandbox.steps import Step

_native: ModuleType | None
try:
    from runner.sandbox import _spawn as _native
except ImportError:  # not compiled (no C compiler at install): the Python way
    _native = None

# The step numbers of _spawn.c.
(MOUNT, MOUNT_ELSE, MKDIRS, MKDIR, TOUCH, WRITE, PUT, SYMLINK, IDENT, REMOUNT, SEAL,
 PIVOT, CHDIR, UMOUNT, SETNS, HOSTNAME, LOOPBACK, IDS, NO_NEW_PRIVS, SECCOMP, PDEATHSIG, ALIVE,
 UMASK, SETSID, DUP2, TRACE, EXEC, STUBS, BINDS) = range(1, 30)

# What `RUNNER_SANDBOX_SPAWN=python` selects in runner's environment (tests, bench/).
SPAWN_ENV = "RUNNER_SANDBOX_SPAWN"

Arg = int | str | bytes
_HEAD = struct.Struct("<II").pack
_NUMBER = struct.Struct("<cq").pack
_TEXT = struct.Struct("<cI").pack


def built() -> bool:
    """Whether the extension was compiled when runner was installed."""
    return _native is not None


def module() -> ModuleType | None:
    """The compiled extension, when it is built and not turned off."""
    if os.environ.get(SPAWN_ENV) == "python":
        return None
    return _native


class Program:
    """Steps in _spawn.c's wire format: per step u32 op, u32 nargs, then per
    argument 'i' + i64 or 's' + u32 length + bytes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0

    def add(self, op: int, *args: Arg) -> None:
        self.count += 1
        parts = self.parts
        parts.append(_HEAD(op, len(args)))
        for a in args:
            if isinstance(a, int):
                parts.append(_NUMBER(b"i", a))
            else:
                data = a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a
                parts.append(_TEXT(b"s", len(data)))
                parts.append(data)

    def encode(self) -> bytes:
        return b"".join(self.parts)


def compile_program(plan: SandboxPlan, steps: Sequence[Step], *, stdio: tuple[int, int, int],
                    alive_fd: int, net_fd: int = -1) -> Program:
    """What the builder does between its clone and its exec (`child.enter`'s order)."""
    p = Program()
    tracing = bool(os.environ.get(trace.ENV))
    p.add(UMASK, 0o022)
    p.add(SETSID)
    for target, source in enumerate(stdio):
        p.add(DUP2, source, target)
    p.add(PDEATHSIG, signal.SIGKILL)
    if plan.user_namespace:
        p.add(PUT, "/proc/self/setgroups", "deny")
        p.add(PUT, "/proc/self/uid_map", plan.uid_map)
        p.add(PUT, "/proc/self/gid_map", plan.gid_map)
    if plan.private_network and net_fd >= 0:
        p.add(SETNS, net_fd, libc.CLONE_NEWNET)
    p.add(HOSTNAME, plan.hostname, "(none)")
    if plan.private_network and net_fd < 0:
        p.add(LOOPBACK)
    if tracing:
        p.add(TRACE, "namespaces")
    _root(p, steps, plan.user_namespace, tracing)
    if not plan.user_namespace:
        p.add(IDS, plan.build_gid, plan.build_uid)
    p.add(NO_NEW_PRIVS)
    if plan.deny_unix_sockets:
        if not seccomp.supported():
            raise OSError(0, "seccomp: no filter for this machine")
        p.add(SECCOMP, seccomp.program())
    p.add(PDEATHSIG, signal.SIGKILL)  # the uid change cleared it
    p.add(ALIVE, alive_fd)
    p.add(CHDIR, plan.cwd)
    p.add(EXEC, *exec_candidates(plan))
    return p


def _root(p: Program, steps: Sequence[Step], user_namespace: bool, tracing: bool) -> None:
    """`child._make_root`: a scratch tmpfs with the host root at OLD, the new root
    assembled at NEW, pivoted in, the host detached."""
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
    """`storeview.make`: an overlay of the staging store over stubs on the scratch
    tmpfs, else (no overlay here) the staging store bound, with the stubs on disk."""
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
    _stubs(fallback, target, step.inputs)
    if step.stubs_on_disk or storeview.unsafe_for_overlay(upper, work):
        p.parts += fallback.parts
        p.count += fallback.count
        return
    p.add(MKDIR, storeview.STUBS, 0o755)
    _stubs(p, storeview.STUBS, step.inputs)
    options = f"lowerdir={storeview.STUBS},upperdir={upper},workdir={work},volatile"
    p.add(MOUNT_ELSE, fallback.count, "overlay", target, "overlay",
          libc.MS_NOSUID | libc.MS_NODEV, options + (",userxattr" if user_namespace else ""))
    p.parts += fallback.parts
    p.count += fallback.count


def _stubs(p: Program, where: str, inputs: tuple[str, ...]) -> None:
    if inputs:
        p.add(STUBS, where, _entries(inputs))


def _entries(inputs: tuple[str, ...]) -> str:
    """`Step.inputs` as one string for STUBS and BINDS: each entry NUL-terminated
    (a symlink's "l<name>\\0<target>" has its own NUL already)."""
    return "\0".join(inputs) + "\0"


def clone_flags(plan: SandboxPlan, net_fd: int) -> int:
    flags = libc.CLONE_NEWPID | libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
    if plan.user_namespace:
        flags |= libc.CLONE_NEWUSER
    if plan.private_network and net_fd < 0:
        flags |= libc.CLONE_NEWNET
    return flags
