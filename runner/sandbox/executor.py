"""Start a build inside the sandbox a plan describes.

Process shape (Python < 3.12 has no os.unshare, so libc is called by ctypes):

    runner ── Popen ──▶ supervisor ── fork ──▶ builder (PID 1 of the new PID namespace)

`subprocess.Popen(preexec_fn=…)` forks the supervisor, which unshares the PID
namespace (and the user namespace when not root) and forks again: only
children of the unsharing process enter a new PID namespace. The builder
unshares mount, IPC, UTS and network namespaces, assembles its root and
returns to Popen, which execs the builder program. The supervisor closes every
inherited descriptor (so Popen's exec-error pipe closes once the builder has
exec'd), waits, moves the outputs out of the staging dir and exits with the
builder's status: the same exit code, or death by the same signal.

Killing the supervisor (or the process group Popen made) ends the build: the
builder has a parent-death signal, and when PID 1 of a PID namespace dies the
kernel kills every other process in it. All mounts live in the build's own
mount namespace and vanish with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from dataclasses import replace
from typing import NoReturn

from runner.errors import RunnerError
from runner.sandbox import child, libc, staging
from runner.sandbox.child import Step
from runner.sandbox.plan import SandboxPlan
from runner.store.canonicalise import remove_tree

_FD_LIMIT = os.sysconf("SC_OPEN_MAX")
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                  signal.SIGCHLD, signal.SIGPIPE)


def spawn(plan: SandboxPlan, *, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
    """Run `plan.argv` in the sandbox; stdin is /dev/null.

    The returned process leads a new session and process group. When it has
    exited, the outputs the build created are at their real paths, owned by
    the invoking user. Sandbox set-up failures raise
    `RunnerError(reason="sandbox-setup")`; a builder that cannot be executed
    raises `OSError` as `Popen` does. Call from a thread that lives as long as
    the build: the build is killed when that thread (its parent) exits.
    """
    staging.prepare(plan)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            launcher = _Launcher(plan, resolve(plan), err_w)
            proc = subprocess.Popen(
                plan.argv, env=dict(plan.env), stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=stderr, start_new_session=True, preexec_fn=launcher.run,
            )
        finally:
            os.close(err_w)
    except subprocess.SubprocessError:
        problem = _read_all(err_r) or "unknown error"
        remove_tree(plan.staging_dir)
        raise RunnerError(f"cannot set up the build sandbox: {problem}",
                          reason="sandbox-setup") from None
    except BaseException:
        remove_tree(plan.staging_dir)
        raise
    finally:
        os.close(err_r)
    return proc


def resolve(plan: SandboxPlan) -> list[Step]:
    """Look at the host once: skip missing optional sources, follow or copy symlinks."""
    host_paths = [m.source for m in plan.mounts if m.kind == "bind" and m.optional]
    steps = []
    for m in plan.mounts:
        if m.kind not in ("bind", "device"):
            steps.append(Step(m, "", False))
            continue
        try:
            st = os.lstat(m.source)
        except FileNotFoundError:
            if m.optional:
                continue
            raise RunnerError(f"sandbox: '{m.source}' does not exist",
                              reason="sandbox-setup") from None
        source = m.source
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(m.source)
            # A store path stays a symlink; so does a host path whose target is
            # mounted anyway (/bin -> usr/bin), keeping the host's layout.
            if not m.optional or any(_within(real, p) for p in host_paths if p != m.source):
                steps.append(Step(replace(m, kind="symlink", data=os.readlink(m.source)), "",
                                  False))
                continue
            try:
                st = os.stat(real)
            except FileNotFoundError:
                continue  # dangling optional host path
            source = real
        steps.append(Step(m, source, stat.S_ISDIR(st.st_mode)))
    return steps


class _Launcher:
    """The preexec_fn: runs in the supervisor, and (returning) in the builder."""

    def __init__(self, plan: SandboxPlan, steps: list[Step], err_fd: int) -> None:
        self.plan = plan
        self.steps = steps
        self.err_fd = err_fd

    def run(self) -> None:
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            for sig in _RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            flags = libc.CLONE_NEWPID
            if self.plan.user_namespace:
                flags |= libc.CLONE_NEWUSER
            libc.unshare(flags)
            if self.plan.user_namespace:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", self.plan.uid_map)
                _write("/proc/self/gid_map", self.plan.gid_map)
            alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                os.close(alive_w)
                child.enter(self.plan, self.steps, alive_r)
                return
        except BaseException as e:
            _report(self.err_fd, e)
            raise
        _supervise(self.plan, pid, alive_w)


def _supervise(plan: SandboxPlan, pid: int, alive_fd: int) -> NoReturn:
    status = 1 << 8
    try:
        os.closerange(3, alive_fd)
        os.closerange(alive_fd + 1, _FD_LIMIT)
        _, status = os.waitpid(pid, 0)
        staging.collect(plan)
    except BaseException as e:
        _report(2, e, prefix="sandbox: cannot collect the outputs: ")
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


def _report(fd: int, e: BaseException, prefix: str = "") -> None:
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.strerror}: {e.filename}"
    elif isinstance(e, OSError) and e.strerror:
        text = e.strerror
    else:
        text = str(e) or type(e).__name__
    with contextlib.suppress(OSError):
        os.write(fd, f"{prefix}{text}\n".encode())


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
