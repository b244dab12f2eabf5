"""A small process that starts sandbox supervisors, so runner does not fork itself.

Forking the whole runner process (50-60 MB, ~1,200 copy-on-write page faults
per spawn) was most of a sandboxed build's start-up cost. Each runner thread
that spawns sandboxed builds starts one fork server (`python -I -S`, importing
only the sandbox's child-side modules) and sends it each build's resolved
plan, with the build's stdin/stdout/stderr and an error pipe as SCM_RIGHTS
descriptors, over a Unix socket.

The server creates each supervisor with `clone(CLONE_PARENT)`: the supervisor
is a child of the *runner thread* that started the server, exactly as if that
thread had forked it. So runner reaps it with `waitpid`, gets the builder's
exit status from it, can kill its process group before reaping it (its pid
cannot be reused meanwhile), and the supervisor's parent-death signal fires
when that thread (or runner) dies — the same threading rule as before. The
supervisor then does what it did before (executor.py): unshare PID (and
user) namespaces, fork the builder, wait, collect the outputs, exit like the
builder.

As root the server also holds the next build's network namespace, made
while it waits (`netns.py`): the builder enters it with `setns` instead of
making one on its critical path; each is given to one build only.

The server itself has a parent-death signal (and checks that runner is still
its parent), ignores SIGINT (Ctrl-C is runner's to handle), has no children
of its own, and exits when runner closes its socket. If it dies, the next
spawn on that thread starts a new one; builds already running are not its
children and go on.

Wire format: the server first sends `READY`. Then, per build, runner sends
an 8-byte length (little endian) carrying the descriptors [stdin, stdout,
stderr, err_w], then a pickled `(runner_pid, plan, steps)`; the server
answers with the supervisor's pid as 8 bytes, or 0 and an errno when it
could not clone. Errors after the clone arrive on err_w as the supervisor's
`report` text, or `supervisor.EXEC_ERROR` + "errno:filename" when the
builder could not be executed; EOF with no data means the builder exec'd.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import platform
import signal
import socket
import struct
import sys

from runner.sandbox import libc, netns, trace
from runner.sandbox.plan import SandboxPlan
from runner.sandbox.steps import Step

HEADER = struct.Struct("<q")
READY = b"R"  # the server's first byte: it is up, its modules loaded
CLONE_PARENT = 0x00008000

# clone's first argument is the flags on every architecture; the others
# (stack, tids, tls) are all 0 here, so their order does not matter.
_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220, "i686": 120, "ppc64le": 120}


def supported() -> bool:
    return platform.machine() in _SYS_CLONE


def clone_parent() -> int:
    """fork(), but the child's parent is this process's parent. Returns 0 in the child.

    PyDLL keeps the GIL across the call, so the child starts with the
    interpreter in the state the parent left it. The server has one thread.
    """
    pydll = ctypes.PyDLL(None, use_errno=True)
    pydll.syscall.restype = ctypes.c_long
    pid = int(pydll.syscall(ctypes.c_long(_SYS_CLONE[platform.machine()]),
                            ctypes.c_ulong(CLONE_PARENT | signal.SIGCHLD),
                            ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                            ctypes.c_ulong(0)))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> None:
    runner_pid, fd = int(argv[1]), int(argv[2])
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runner_pid:
        os._exit(1)  # runner died before the death signal was set
    from runner.sandbox import supervisor  # noqa: F401 - loaded once, not per clone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.sendall(READY)
    home = netns.home()
    spare = netns.make(home) if home is not None else None
    while True:
        try:
            header, fds, _, _ = socket.recv_fds(sock, HEADER.size, 4)
            if not header:
                os._exit(0)
            if len(header) < HEADER.size:
                header += recv_exact(sock, HEADER.size - len(header))
            (size,) = HEADER.unpack(header)
            request = recv_exact(sock, size)
        except (EOFError, ConnectionError):
            os._exit(0)
        for received in fds:
            os.set_inheritable(received, False)
        trace.mark("server-received")
        try:
            parsed = pickle.loads(request)
        except Exception:  # a bad request: runner sees EOF and restarts us
            os._exit(1)
        plan = parsed[1] if isinstance(parsed, tuple) and len(parsed) == 3 else None
        use = spare if isinstance(plan, SandboxPlan) and plan.private_network else None
        try:
            pid = clone_parent()
        except OSError as e:
            sock.sendall(HEADER.pack(0) + HEADER.pack(e.errno or 0))
        else:
            if pid == 0:
                sock.close()
                _supervisor(parsed, fds, -1 if use is None else use)  # never returns
            sock.sendall(HEADER.pack(pid))
        for received in fds:
            os.close(received)
        if use is not None:  # given to that build (or its clone failed): never used again
            os.close(use)
            spare = None
        if spare is None and home is not None:  # the next build's, while this one starts
            spare = netns.make(home)


def _supervisor(request: tuple[int, SandboxPlan, list[Step]], fds: list[int],
                net_fd: int) -> None:
    """In the cloned child: become the sandbox supervisor, exactly as executor's Popen child."""
    status = 1
    try:
        from runner.sandbox import supervisor

        stdin, stdout, stderr, err_w = fds
        runner_pid, plan, steps = request
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != runner_pid:
            os._exit(1)
        os.setsid()
        for target, source in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(source, target)
        supervisor.launch(plan, steps, err_w, net_fd)  # returns in the builder only
        supervisor.exec_builder(plan, err_w)
    except BaseException:  # reported on err_w where it could be
        status = 255
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv)
