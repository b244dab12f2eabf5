"""What the build's first process does inside its new namespaces, before exec.

Runs in a forked child (PID 1 of the new PID namespace), so it must not import,
print or take locks another thread may hold: everything it needs is decided
beforehand by the plan and the executor's `Step`s.

The new root is the one `root.compile_root` describes (a scratch tmpfs pivoted
in first with the host root moved under it, the new root assembled from there,
pivoted in, the host detached, so no host path stays reachable), run here by
`interpret.py`.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct

from runner.sandbox import interpret, libc, seccomp, trace
from runner.sandbox.plan import SandboxPlan
from runner.sandbox.root import compile_root
from runner.sandbox.steps import Step as Step  # re-exported: tests import it from here

SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40


def enter(plan: SandboxPlan, steps: list[Step], alive_fd: int, net_fd: int = -1) -> None:
    """Build the sandbox around this process and become the builder's user.

    `alive_fd` reads EOF once the supervising parent is gone. `net_fd`: a network
    namespace the fork server made for this build alone, its `lo` up (`netns.py`).
    """
    trace.keep()
    trace.mark("builder")
    os.umask(0o022)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
    prepared = plan.private_network and net_fd >= 0
    if prepared:
        libc.setns(net_fd, libc.CLONE_NEWNET)
        os.close(net_fd)
    elif plan.private_network:
        flags |= libc.CLONE_NEWNET
    libc.unshare(flags)
    socket.sethostname(plan.hostname)
    libc.setdomainname("(none)")
    if plan.private_network and not prepared:
        loopback_up()
    trace.mark("namespaces")
    _make_root(steps, plan.user_namespace)
    _drop_privileges(plan)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if plan.deny_unix_sockets:
        seccomp.deny_unix_sockets()
    # Changing uid cleared the death signal; set it again, then make sure the
    # parent did not die in between.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive_fd], [], [], 0)[0]:
        os._exit(1)
    os.close(alive_fd)
    os.chdir(plan.cwd)


def loopback_up() -> None:
    request = struct.pack("16sh22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, request)


def _make_root(steps: list[Step], user_namespace: bool) -> None:
    """The root `root.compile_root` describes, assembled here in Python (the C spawn
    runs the same steps in C)."""
    interpret.run(compile_root(steps, user_namespace, tracing=trace.active()).ops)


def _drop_privileges(plan: SandboxPlan) -> None:
    if plan.user_namespace:
        return  # already build_uid:build_gid by the id maps; exec drops the capabilities
    os.setgroups([])
    os.setresgid(plan.build_gid, plan.build_gid, plan.build_gid)
    os.setresuid(plan.build_uid, plan.build_uid, plan.build_uid)
