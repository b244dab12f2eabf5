"""What the build's first process does inside its new namespaces, before exec.

Runs in a forked child (PID 1 of the new PID namespace), so it must not import,
print or take locks another thread may hold: everything it needs is decided
beforehand by the plan and the executor's `Step`s.

The new root is a tmpfs. To reach host paths that the tmpfs would hide (e.g.
a build dir under /tmp), a scratch tmpfs is pivoted in first with the host
root moved under it at /old; the new root is assembled at /new from /old
sources, then pivoted in and /old detached, so no host path stays reachable.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct

from runner.sandbox import libc, seccomp, storeview, trace
from runner.sandbox.mounts import remount, seal_submounts
from runner.sandbox.plan import SandboxPlan
from runner.sandbox.steps import Step as Step  # re-exported: tests import it from here

SCRATCH = "/tmp"  # any host dir works; its tmpfs is gone once the new root is in
NEW = "/new"
OLD = "/old"

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
    # Mounts on shared subtrees would propagate to the host; make ours private.
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount("tmpfs", SCRATCH, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0700")
    os.chdir(SCRATCH)
    os.mkdir(NEW[1:])
    os.mkdir(OLD[1:])
    libc.pivot_root(".", OLD[1:])
    os.chdir("/")
    trace.mark("pivoted-to-scratch")
    for step in steps:
        _apply(step, user_namespace)
    trace.mark("mounted")
    sealed = [NEW + s.mount.target for s in steps
              if s.mount.kind == "bind" and not s.mount.writable]
    for step in steps:
        if step.mount.kind == "store":
            sealed += storeview.sealed_with(step)
    seal_submounts(sealed, OLD + "/proc")
    for step in steps:  # tmpfs mounts hold only what the plan put there
        if step.mount.kind == "tmpfs" and not step.mount.writable:
            remount(NEW + step.mount.target, readonly=True, nodev=True)
    trace.mark("sealed")
    # The inputs last: sealing reads the mount table, which they would make long
    # (they need no sealing: they come from the sealed read-only store bind).
    for step in steps:
        if step.mount.kind == "store":
            storeview.bind_inputs(step, NEW + step.mount.target)
    trace.mark("inputs-bound")
    os.chdir(NEW)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def _apply(step: Step, user_namespace: bool) -> None:
    m = step.mount
    target = NEW + m.target if m.target != "/" else NEW
    if m.kind == "tmpfs":
        os.makedirs(target, exist_ok=True)
        libc.mount("tmpfs", target, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, m.data)
    elif m.kind == "proc":
        os.makedirs(target, exist_ok=True)
        libc.mount("proc", target, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    elif m.kind == "devpts":
        os.makedirs(target, exist_ok=True)
        libc.mount("devpts", target, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620")
    elif m.kind == "file":
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, m.data.encode())
        finally:
            os.close(fd)
    elif m.kind == "store":
        storeview.make(step, target, OLD, user_namespace=user_namespace,
                       force_stubs=step.stubs_on_disk)
    elif m.kind == "symlink":
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(m.data, target)
    else:  # bind, device
        _mount_point(target, step.is_dir)
        libc.mount(OLD + step.source, target, None, libc.MS_BIND | libc.MS_REC)
        if step.ident is not None:
            st = os.stat(target)
            if (st.st_dev, st.st_ino) != step.ident:  # swapped since it was checked
                raise OSError(0, f"sandbox path '{m.source}' changed while being bound")
        remount(target, readonly=not m.writable, nodev=m.kind != "device")


def _mount_point(target: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))


def _drop_privileges(plan: SandboxPlan) -> None:
    if plan.user_namespace:
        return  # already build_uid:build_gid by the id maps; exec drops the capabilities
    os.setgroups([])
    os.setresgid(plan.build_gid, plan.build_gid, plan.build_gid)
    os.setresuid(plan.build_uid, plan.build_uid, plan.build_uid)
