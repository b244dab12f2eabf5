"""A child the fork server cloned for this thread: our own small process handle.

The fork server creates each supervisor with `clone(CLONE_PARENT)`, so the
supervisor is this thread's child although this thread never forked it.
`subprocess.Popen` cannot adopt such a child without overriding its private
`_execute_child`, so this class does the little a caller needs: the pid, a
pidfd (signals go through it, so they never reach a recycled pid), `poll`,
`wait` (with a timeout), `send_signal`/`kill`/`terminate`, `communicate`
for pipes, and `returncode` in Popen's convention (negative: killed by that
signal). Both `spawn` results satisfy `runner.build.process.Child`.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

from runner.sandbox import trace


class ServedProcess:
    def __init__(self, args: tuple[str, ...], pid: int, stdout: IO[bytes] | None,
                 stderr: IO[bytes] | None, on_exit: Callable[[], None] | None = None) -> None:
        self.args = args
        self.pid = pid
        self.stdin: IO[bytes] | None = None
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._pidfd: int | None = os.pidfd_open(pid)  # the child is ours until reaped
        self._read: dict[int, list[bytes]] = {}
        # Run once reaped, unless it was killed by SIGKILL (ended by runner: what it
        # left is discarded). Its error makes a zero exit status 1 and is kept here.
        self.on_exit = on_exit
        self.exit_problem: str | None = None

    def poll(self) -> int | None:
        return self._reap(block=False)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and self.returncode is None:
            pidfd = self._pidfd
            if pidfd is not None and not _readable(pidfd, timeout):
                raise subprocess.TimeoutExpired(list(self.args), timeout)
        code = self._reap(block=True)
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None and self._pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        """Read the piped stdout/stderr to their ends, then wait, as Popen does.
        After a TimeoutExpired, a later call goes on where this one stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pipes = [p for p in (self.stdout, self.stderr) if p is not None and not p.closed]
        with selectors.DefaultSelector() as sel:
            for pipe in pipes:
                sel.register(pipe.fileno(), selectors.EVENT_READ, pipe)
            while sel.get_map():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = sel.select(left)
                if not ready and deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(list(self.args), timeout or 0.0)
                for key, _ in ready:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self._read.setdefault(id(key.data), []).append(chunk)
                    else:
                        sel.unregister(key.fd)
                        key.data.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return self._output(self.stdout), self._output(self.stderr)

    def _output(self, pipe: IO[bytes] | None) -> bytes | None:
        if pipe is None:
            return None
        return b"".join(self._read.pop(id(pipe), []))

    def _reap(self, *, block: bool) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the status is lost
                pid, status = self.pid, 255 << 8
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(status)
            if self.on_exit is not None and code != -signal.SIGKILL:
                trace.mark("builder-reaped")
                try:
                    self.on_exit()
                    trace.mark("collected")
                except Exception as e:
                    self.exit_problem = _describe(e)
                    code = code or 1
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            return self.returncode

    def __del__(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)


def _describe(e: Exception) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__


def _readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))
