"""The builder's start without Python in between: the plan compiled for `_spawn.c`.

The fork server and supervisor (`forkserver.py`, `supervisor.py`) cost two
process starts from Python per build, each copying on write a part of an
interpreter, plus the root's ~250 system calls made from Python. Where the C
extension `runner.sandbox._spawn` is built (setup.py; it is optional), runner
instead clones the builder itself, straight into its namespaces, sharing
runner's memory until the exec (CLONE_VM | CLONE_VFORK, as posix_spawn):

    runner thread ── clone(CLONE_NEW*) ──▶ builder (PID 1 of its PID namespace)

What the builder does before its exec is `compile_program`'s list of steps:
the process set-up around `root.compile_root`'s root, which the Python way
(`child.py`) runs too. No supervisor: runner's thread is the
builder's parent, reaps it, and copies the outputs out of the staging dir
itself (`ServedProcess`'s `on_exit`, off the event loop). The builder writes
its own user-namespace maps (one line mapping runner's uid, which a process
may do for itself).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from types import ModuleType

from runner.sandbox import libc, seccomp, trace
from runner.sandbox.plan import SandboxPlan, exec_candidates
from runner.sandbox.root import (
    ALIVE,
    CHDIR,
    DUP2,
    EXEC,
    HOSTNAME,
    IDS,
    LOOPBACK,
    NO_NEW_PRIVS,
    PDEATHSIG,
    PUT,
    SECCOMP,
    SETNS,
    SETSID,
    TRACE,
    UMASK,
    Program,
    compile_root,
)
from runner.sandbox.steps import Step

_native: ModuleType | None
try:
    from runner.sandbox import _spawn as _native
except ImportError:  # not compiled (no C compiler at install): the Python way
    _native = None

# What `RUNNER_SANDBOX_SPAWN=python` selects in runner's environment (tests, bench/).
SPAWN_ENV = "RUNNER_SANDBOX_SPAWN"


def built() -> bool:
    """Whether the extension was compiled when runner was installed."""
    return _native is not None


def module() -> ModuleType | None:
    """The compiled extension, when it is built and not turned off."""
    if os.environ.get(SPAWN_ENV) == "python":
        return None
    return _native


def compile_program(plan: SandboxPlan, steps: Sequence[Step], *, stdio: tuple[int, int, int],
                    alive_fd: int, net_fd: int = -1) -> Program:
    """What the builder does between its clone and its exec (`child.enter`'s order)."""
    p = Program()
    tracing = trace.active()
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
    p.extend(compile_root(steps, plan.user_namespace, tracing))
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


def clone_flags(plan: SandboxPlan, net_fd: int) -> int:
    flags = libc.CLONE_NEWPID | libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
    if plan.user_namespace:
        flags |= libc.CLONE_NEWUSER
    if plan.private_network and net_fd < 0:
        flags |= libc.CLONE_NEWNET
    return flags
