"""Start a build inside the sandbox a plan describes.

Where the C extension is built (the default), the calling thread clones the
builder straight into its namespaces (`native.py`, `_spawn.c`):

    runner thread ── clone(CLONE_VM|CLONE_VFORK|CLONE_NEW*) ──▶ builder (PID 1)

and copies the outputs out when it reaps it. Otherwise, the Python way
(Python < 3.12 has no os.unshare, so libc is called by ctypes):

    runner ─┬─ fork server ── clone(CLONE_PARENT) ─┐
            └─ (parent of) ◀───────────────────────┴─ supervisor ── fork ──▶ builder

Each runner thread that spawns sandboxed builds has its own fork
server (`forkserver.py`): a small Python process that creates each
supervisor as a child of that runner thread, so runner does not fork its own
50-60 MB address space per build. Without it (`fork_server=False`, the
environment variable `RUNNER_SANDBOX_FORK_SERVER=0`, or an architecture it
does not know) `subprocess.Popen(preexec_fn=…)` forks the supervisor from
runner itself. Either way the supervisor (`supervisor.py`) unshares the PID
(and user) namespace, forks the builder (PID 1 of the new PID namespace),
which builds its root (`child.py`) and execs; the supervisor waits, moves
the outputs out of the staging dir and exits with the builder's status.

SIGKILL to the returned process (or its process group) ends the build: the
builder has a parent-death signal, and when PID 1 of a PID namespace dies the
kernel kills every other process in it. All mounts live in the build's own mount
namespace and vanish with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pickle
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType

from runner.errors import RunnerError
from runner.sandbox import (
    forkserver,
    native,
    netns,
    slots,
    staging,
    storeview,
    supervisor,
    trace,
)
from runner.sandbox.plan import Mount, SandboxPlan, not_allowed
from runner.sandbox.served import ServedProcess
from runner.sandbox.steps import Step
from runner.store import trash

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The fork server imports only the child-side modules (runner/sandbox/__init__.py
# imports nothing at import time, so it does not pull in this module).
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from runner.sandbox.forkserver import main; main(sys.argv)")


class _SetupError(Exception):
    pass


def use_fork_server() -> bool:
    return (os.environ.get("RUNNER_SANDBOX_FORK_SERVER", "1") != "0"
            and forkserver.supported())


def spawn(plan: SandboxPlan, *, stdout: int, stderr: int,
          fork_server: bool | None = None) -> ServedProcess | subprocess.Popen[bytes]:
    """Run `plan.argv` in the sandbox; stdin is /dev/null.

    The returned process, a child of the calling thread, is the builder itself
    (the C spawn: a `ServedProcess` that copies the outputs out when reaped) or
    its supervisor (a `ServedProcess` when a fork server cloned it, else a
    `Popen`); it leads a new session and process group. When it has exited, the outputs
    the build created are at their real paths, owned by the invoking user
    (the C spawn's staging dir is then set aside, removed by
    `runner.store.trash`'s thread; `trash.drain()` waits for that).
    Sandbox set-up failures raise `RunnerError(reason="sandbox-setup")`; a
    builder that cannot be executed raises `OSError` as `Popen` does. Call
    from a thread that lives as long as the build: the build is killed when
    that thread (its parent) exits. `fork_server` None: the C spawn where it is
    built, else `use_fork_server()`; True or False: the Python way, with or without
    the fork server.
    """
    trace.mark("spawn")
    compiled = native.module() if fork_server is None else None
    try:
        steps = resolve(plan)
        trace.mark("resolved")
        # The C spawn keeps staging dirs with their stubs between builds (slots.py); the
        # Python way collects in a supervisor, another process: fresh dirs only.
        store = next((s for s in steps if s.mount.kind == "store"), None)
        if staging.prepare(plan, store.inputs if compiled and store else None):
            steps = [replace(s, stubs_made=True) if s is store else s for s in steps]
        trace.mark("staged")
        server = None
        if compiled is not None:
            return _direct(compiled, plan, steps, stdout=stdout, stderr=stderr)
        if fork_server if fork_server is not None else use_fork_server():
            server = _thread_server()
        if server is not None:
            proc: ServedProcess | subprocess.Popen[bytes] = _served(
                server, plan, steps, stdout=stdout, stderr=stderr)
        else:
            proc = _forked(plan, steps, stdout=stdout, stderr=stderr)
    except _SetupError as e:
        staging.remove(plan)
        raise RunnerError(f"cannot set up the build sandbox: {e}",
                          reason="sandbox-setup") from None
    except BaseException:
        staging.remove(plan)
        raise
    return proc


def _direct(compiled: ModuleType, plan: SandboxPlan, steps: list[Step], *, stdout: int,
            stderr: int) -> ServedProcess:
    """Clone the builder from this thread with the C extension (`native.py`); return
    once it exec'd. The returned process copies the outputs out when it is reaped."""
    ours: list[int] = []  # our ends of new pipes
    theirs: list[int] = []  # the child's: closed here once it has exec'd
    trace_fd = trace.open_fd()
    try:
        null, out_r, out_fd, err_r, err_fd = _child_stdio(stdout, stderr, theirs, ours)
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        ours.append(pipe_r)
        theirs.append(pipe_w)
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)  # EOF in the child: runner is gone
        theirs += [alive_r, alive_w]
        net_fd = _take_spare_network() if plan.private_network else -1
        if net_fd >= 0:
            theirs.append(net_fd)
        # The child dup2s these onto 0, 1 and 2 in turn: none may be one of those
        # (possible when runner itself runs with its stdin or stdout closed).
        stdio = (_above_stdio(null, theirs), _above_stdio(out_fd, theirs),
                 _above_stdio(err_fd, theirs))
        program = native.compile_program(plan, steps, stdio=stdio, alive_fd=alive_r,
                                         net_fd=net_fd)
        env = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in plan.env.items()]
        try:
            pid = compiled.spawn(program.encode(), [os.fsencode(a) for a in plan.argv], env,
                                 native.clone_flags(plan, net_fd), pipe_w,
                                 -1 if trace_fd is None else trace_fd)
        except OSError as e:
            raise _SetupError(f"clone: {e.strerror or e}") from None
        trace.mark("exec'd")
        for fd in theirs:
            os.close(fd)
        theirs.clear()
        problem = _read_all_bytes(pipe_r)  # the child has exec'd or exited: no blocking
        ours.remove(pipe_r)
        os.close(pipe_r)
        proc = _adopt(plan, pid, out_r, err_r, on_exit=None if problem else lambda: (
            staging.collect(plan, remove=functools.partial(_set_aside, plan))))
        ours.clear()  # the process owns them now
    finally:
        for fd in theirs + ours:
            os.close(fd)
        if trace_fd is not None:
            os.close(trace_fd)
    if not problem:
        _make_spare_network()  # for this thread's next build, while this one runs
        return proc
    _reap_failed(proc)
    kind, _, rest = problem.decode(errors="replace").partition(":")
    number = int(kind[1:]) if kind[1:].isdigit() else 0
    if kind.startswith("x"):
        raise OSError(number or 2, os.strerror(number or 2), rest)
    if kind.startswith("e"):
        raise _SetupError(f"{os.strerror(number)}: {rest}")
    raise _SetupError(rest.strip() or "unknown error")


def _set_aside(plan: SandboxPlan, staging_dir: str) -> None:
    """The collected staging dir: kept for the next build (slots.py), else trashed."""
    if not slots.give_back(plan):
        trash.discard(staging_dir)


def _take_spare_network() -> int:
    """This thread's network namespace made ahead (`netns.py`), now the caller's to
    give to one build; -1 when there is none (then the builder makes its own)."""
    spare: int = getattr(_local, "net", -1)
    _local.net = -1
    return spare


def thread_spare_network() -> int:
    """The calling thread's network namespace made ahead, or -1 (for tests)."""
    spare: int = getattr(_local, "net", -1)
    return spare


def _make_spare_network() -> None:
    if getattr(_local, "net", -1) >= 0:
        return
    home: int | None = getattr(_local, "net_home", None)
    if home is None:  # first time on this thread: -1 when not root
        own = netns.home(netns.THREAD_NS_FILE)
        home = _local.net_home = -1 if own is None else own
    if home >= 0:
        made = netns.make(home, netns.THREAD_NS_FILE)
        _local.net = -1 if made is None else made


def _forked(plan: SandboxPlan, steps: list[Step], *, stdout: int,
            stderr: int) -> subprocess.Popen[bytes]:
    """The supervisor as a fork of runner itself."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            return subprocess.Popen(
                plan.argv, env=dict(plan.env), stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=stderr, start_new_session=True,
                preexec_fn=functools.partial(supervisor.launch, plan, steps, err_w),
            )
        finally:
            os.close(err_w)
    except subprocess.SubprocessError:
        raise _SetupError(_read_all(err_r) or "unknown error") from None
    finally:
        os.close(err_r)


class _ForkServer:
    """One runner thread's fork server; it dies with that thread (parent-death signal)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT, _ROOT, str(os.getpid()),
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        try:
            ready = forkserver.recv_exact(ours, 1)
        except (EOFError, OSError):
            ready = b""
        if ready != forkserver.READY:
            self.close()
            raise OSError(0, "the sandbox fork server did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, plan: SandboxPlan, steps: list[Step], fds: list[int]) -> int:
        """Have the server clone a supervisor for `plan`; its pid."""
        data = pickle.dumps((os.getpid(), plan, steps), pickle.HIGHEST_PROTOCOL)
        try:
            header = forkserver.HEADER.pack(len(data))
            socket.send_fds(self.sock, [header], fds, socket.MSG_NOSIGNAL)
            self.sock.sendall(data, socket.MSG_NOSIGNAL)
            (pid,) = forkserver.HEADER.unpack(forkserver.recv_exact(self.sock,
                                                                    forkserver.HEADER.size))
            if pid == 0:
                (errno,) = forkserver.HEADER.unpack(
                    forkserver.recv_exact(self.sock, forkserver.HEADER.size))
                raise _SetupError(f"clone: {os.strerror(errno)}")
        except (EOFError, OSError) as e:
            self.close()
            raise _SetupError(f"the sandbox fork server died ({e or 'EOF'})") from None
        return int(pid)

    def close(self) -> None:
        self.sock.close()
        if self.proc.returncode is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_local = threading.local()
_unavailable: list[str] = []  # why no fork server starts in this process


def _thread_server() -> _ForkServer | None:
    """The calling thread's fork server, started (again) if need be; None if none starts
    (e.g. `sys.executable` is not executable by this user): runner forks itself then."""
    server: _ForkServer | None = getattr(_local, "server", None)
    if server is not None and server.alive():
        return server
    if server is not None:
        server.close()
        _local.server = None
    if _unavailable:
        return None
    try:
        server = _local.server = _ForkServer()
    except OSError as e:
        _unavailable.append(str(e))
        return None
    return server


def thread_server_pid() -> int | None:
    """The calling thread's fork server, if it has one (for tests)."""
    server: _ForkServer | None = getattr(_local, "server", None)
    return server.proc.pid if server is not None else None


def _served(server: _ForkServer, plan: SandboxPlan, steps: list[Step], *, stdout: int,
            stderr: int) -> ServedProcess:
    """Have the server clone the supervisor with these descriptors (`subprocess.PIPE`,
    `STDOUT` and `DEVNULL` as for Popen); return once the builder exec'd."""
    ours: list[int] = []  # our ends of new pipes, and /dev/null
    theirs: list[int] = []  # closed here once the server has its copies
    try:
        null, out_r, out_fd, err_r, err_fd = _child_stdio(stdout, stderr, theirs, ours)
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        theirs.append(pipe_w)
        try:
            pid = server.request(plan, steps, [null, out_fd, err_fd, pipe_w])
            trace.mark("cloned")
        finally:
            for fd in theirs:
                os.close(fd)
            theirs.clear()
            ours.append(pipe_r)
        problem = _read_all_bytes(pipe_r)  # EOF: the builder exec'd (or failed to)
        trace.mark("exec'd")
        ours.remove(pipe_r)
        os.close(pipe_r)
        proc = _adopt(plan, pid, out_r, err_r)
        ours.clear()  # the process owns them now
    finally:
        for fd in theirs + ours:
            os.close(fd)
    if not problem:
        return proc
    _reap_failed(proc)
    if problem.startswith(supervisor.EXEC_ERROR):
        number, _, name = problem[len(supervisor.EXEC_ERROR):].decode(
            errors="replace").partition(":")
        errno = int(number) if number.isdigit() else 2
        raise OSError(errno, os.strerror(errno), name)
    raise _SetupError(problem.decode(errors="replace").strip() or "unknown error")


def _child_stdio(stdout: int, stderr: int, theirs: list[int],
                 ours: list[int]) -> tuple[int, int | None, int, int | None, int]:
    """(/dev/null for stdin, our stdout end or None, the builder's stdout, the same for
    stderr) for Popen-style specs; new descriptors are added to `theirs` and `ours`."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    theirs.append(null)
    out_r, out_fd = _child_end(stdout, null, theirs, ours)
    err_r, err_fd = (None, out_fd) if stderr == subprocess.STDOUT else _child_end(
        stderr, null, theirs, ours)
    return null, out_r, out_fd, err_r, err_fd


def _above_stdio(fd: int, theirs: list[int]) -> int:
    if fd > 2:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    theirs.append(copy)
    return copy


def _adopt(plan: SandboxPlan, pid: int, out_r: int | None, err_r: int | None,
           on_exit: Callable[[], None] | None = None) -> ServedProcess:
    return ServedProcess(plan.argv, pid, os.fdopen(out_r, "rb") if out_r is not None else None,
                         os.fdopen(err_r, "rb") if err_r is not None else None, on_exit=on_exit)


def _reap_failed(proc: ServedProcess) -> None:
    """A child that reported a failure before its exec: reap it, close our pipe ends."""
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _child_end(spec: int, null: int, theirs: list[int], ours: list[int]) -> tuple[int | None, int]:
    """(our read end or None, the descriptor the builder writes to) for a Popen-style spec."""
    if spec == subprocess.DEVNULL:
        return None, null
    if spec == subprocess.PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        ours.append(r)
        theirs.append(w)
        return r, w
    if spec < 0:
        raise ValueError(f"unsupported descriptor {spec}")
    return None, spec


def resolve(plan: SandboxPlan) -> list[Step]:
    """Look at the host once: skip missing optional sources, follow or copy symlinks."""
    host_paths = [m.source for m in plan.mounts if m.kind == "bind" and m.optional]
    steps = []
    for m in plan.mounts:
        if m.kind == "store":
            steps.append(Step(m, m.source, True, inputs=_inputs(plan.inputs),
                              stubs_on_disk=not storeview.wants_overlay(len(plan.inputs))))
            continue
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
        if m.within:  # a spec's path: check where it really leads (docs/security.md, 6)
            step = _resolve_spec_path(m)
            if step is not None:
                steps.append(step)
            continue
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


# Each input's entry, by path. A store path's type (and a symlink's target) never
# changes while it is valid, so a node of a chain looks only at its one new input,
# not again at the 999 its parent had (docs/sandbox.md, "Cost"). Were a path deleted
# and made again as another type meanwhile, its bind would fail: a set-up error.
_ENTRIES: dict[str, str] = {}
_ENTRIES_MAX = 200_000


def _inputs(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Each input as `child.Step.inputs` wants it: one lstat (the first time), no mount
    per path here."""
    if len(_ENTRIES) > _ENTRIES_MAX:
        _ENTRIES.clear()
    entries = []
    for path in paths:
        entry = _ENTRIES.get(path)
        if entry is None:
            entry = _ENTRIES[path] = _entry(path)
        entries.append(entry)
    return tuple(entries)


def _entry(path: str) -> str:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RunnerError(f"sandbox: '{path}' does not exist", reason="sandbox-setup") from None
    name = os.path.basename(path)
    if stat.S_ISLNK(st.st_mode):
        return f"l{name}\0{os.readlink(path)}"
    return ("d" if stat.S_ISDIR(st.st_mode) else "f") + name


def _resolve_spec_path(m: Mount) -> Step | None:
    """Bind what `m.source` resolves to, only if that is under an allowed prefix
    (itself resolved); the child checks that what it bound is this very inode."""
    real = os.path.realpath(m.source)
    if not any(_within(real, os.path.realpath(a)) for a in m.within):
        raise not_allowed(m.source, real)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None  # dangling: optional like every host path
    return Step(m, real, stat.S_ISDIR(st.st_mode), (st.st_dev, st.st_ino))


def _read_all_bytes(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_all(fd: int) -> str:
    return _read_all_bytes(fd).decode(errors="replace").strip()


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
