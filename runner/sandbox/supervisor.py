"""The sandbox supervisor and the builder's last steps before exec.

Runs in a forked child of runner (`executor.spawn`'s Popen, fork server off)
or of the fork server (`forkserver.py`), so it imports only what the fork
server has anyway. Process shape:

    supervisor ── fork ──▶ builder (PID 1 of the new PID namespace)

The supervisor unshares the PID namespace (and the user namespace when not
root) and forks: only children of the unsharing process enter a new PID
namespace. The builder (`child.enter`) unshares mount, IPC, UTS and network
namespaces, assembles its root, and is exec'd by the caller. The supervisor
closes every inherited descriptor (so the error pipe closes once the builder
has exec'd), waits, moves the outputs out of the staging dir and exits with
the builder's status: the same exit code, or death by the same signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import NoReturn

from runner.sandbox import child, libc, staging, trace
from runner.sandbox.plan import SandboxPlan, exec_candidates
from runner.sandbox.steps import Step

EXEC_ERROR = b"\0exec:"  # then "errno:filename": the builder could not be executed

_FD_LIMIT = os.sysconf("SC_OPEN_MAX")
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                  signal.SIGCHLD, signal.SIGPIPE)


def launch(plan: SandboxPlan, steps: list[Step], err_fd: int, net_fd: int = -1) -> None:
    """Supervise a build: returns only in the builder, inside its sandbox, ready to exec.
    `net_fd`: a fresh network namespace to enter (`netns.py`), or -1 to make one."""
    try:
        trace.mark("supervisor")
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # Handled by runner: the supervisor dies by these as a plain process would (the
        # builder has every signal reset at its exec: `exec_builder`).
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        flags = libc.CLONE_NEWPID
        if plan.user_namespace:
            flags |= libc.CLONE_NEWUSER
        libc.unshare(flags)
        if plan.user_namespace:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", plan.uid_map)
            _write("/proc/self/gid_map", plan.gid_map)
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
        trace.mark("supervisor-unshared")
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            child.enter(plan, steps, alive_r, net_fd)
            return
    except BaseException as e:
        report(err_fd, e)
        raise
    _supervise(plan, pid, alive_w)


def exec_builder(plan: SandboxPlan, err_fd: int) -> NoReturn:
    """exec `plan.argv` as Popen would (PATH from the plan's env); report failure on err_fd."""
    exe = plan.argv[0]
    env = dict(plan.env)
    error: OSError | None = None
    # Every signal to its default, glibc's own 32 and 33 too, only now: the ids are
    # dropped (glibc's setuid family uses 33 among a process's threads).
    libc.default_all_signals()
    for path in exec_candidates(plan):
        try:
            os.execve(path, plan.argv, env)
        except OSError as e:
            if error is None or e.errno not in (2, 20):  # keep the first telling error
                error = e
    number = error.errno if error is not None and error.errno else 2
    with contextlib.suppress(OSError):
        os.write(err_fd, EXEC_ERROR + f"{number}:{exe}".encode())
    os._exit(255)


def _supervise(plan: SandboxPlan, pid: int, alive_fd: int) -> NoReturn:
    status = 1 << 8
    log = -1
    try:
        os.closerange(3, alive_fd)
        os.closerange(alive_fd + 1, _FD_LIMIT)
        # Hold the log pipe only by an O_PATH reference (not a writer), so the log
        # closes when the builder closes it: runner ends a builder that closed its
        # log and kept running (runner/build/process.py), as Nix does.
        log = os.open("/proc/self/fd/2", os.O_PATH | os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        _, status = os.waitpid(pid, 0)
        trace.mark("builder-reaped")
        staging.collect(plan)
        trace.mark("collected")
    except BaseException as e:
        with contextlib.suppress(OSError):  # reopen the log for writing, if it is read
            os.dup2(os.open(f"/proc/self/fd/{log}", os.O_WRONLY | os.O_NONBLOCK), 2)
        report(2, e, prefix="sandbox: cannot collect the outputs: ")
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            status = 1 << 8
    finally:
        _exit_like(status)


def _exit_like(status: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def report(fd: int, e: BaseException, prefix: str = "") -> None:
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.strerror}: {e.filename}"
    elif isinstance(e, OSError) and e.strerror:
        text = e.strerror
    else:
        text = str(e) or type(e).__name__
    with contextlib.suppress(OSError):
        os.write(fd, f"{prefix}{text}\n".encode())
