"""Supervising one builder process from the event loop: its log pipe, its exit, its limits.

No threads and no polling: the pipe and a pidfd are registered with the
loop, and each limit is one timer. The builder leads its own process group
(or PID namespace); whatever ends the build, the whole group is killed
before the builder is reaped, so no child outlives it.

A build also ends when its log closes, as in Nix: a builder that closed its
stdout and stderr and kept running is killed (`failed due to signal 9`).
A builder that exits closes its log a moment before it can be reaped, so
the kill waits `LOG_CLOSED_GRACE`. `Shape` says what `proc` is: the builder
itself; a sandbox supervisor, which holds no writer of the log and is left
alone once its builder (its only child) has exited: it is moving the outputs
out; or a sandboxed builder whose reaping moves the outputs out in runner
(`ServedProcess.on_exit`): then it is reaped on a thread, off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

READ_SIZE = 65536
LOG_CLOSED_GRACE = 0.1  # seconds between the log's EOF and killing a builder still running


class Child(Protocol):
    """A builder process: a `subprocess.Popen`, or the sandbox's `ServedProcess`."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class Shape(enum.Enum):
    PLAIN = "plain"  # proc is the builder
    SUPERVISOR = "supervisor"  # proc supervises the builder, its only child
    COLLECTING = "collecting"  # proc is the builder; reaping it collects the outputs


class Ending(enum.Enum):
    EXITED = "exited"
    TIMED_OUT = "timed-out"
    SILENT = "silent"
    LOG_LIMIT = "log-limit"


@dataclass(frozen=True)
class Limits:
    timeout: float = 0  # seconds; 0 = none
    max_silent_time: float = 0
    max_log_size: int = 0  # bytes


@dataclass(frozen=True)
class ProcessEnd:
    ending: Ending
    returncode: int  # negative: killed by that signal
    log_closed: bool = False  # killed because it closed its log and kept running


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Supervisor:
    def __init__(
        self, proc: Child, read_fd: int, limits: Limits,
        on_output: Callable[[bytes], None], shape: Shape = Shape.PLAIN,
    ) -> None:
        self.proc = proc
        self.shape = shape
        self.reaping = False
        self.log_closed = False
        self.read_fd = read_fd
        self.limits = limits
        self.on_output = on_output
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.ending = Ending.EXITED
        self.killed = False
        self.size = 0
        self.last_output = self.loop.time()
        self.timers: list[asyncio.TimerHandle] = []
        self.pidfd: int | None = None

    async def run(self) -> ProcessEnd:
        os.set_blocking(self.read_fd, False)
        self.loop.add_reader(self.read_fd, self._on_readable)
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): a thread waits instead
            waiter = self.loop.run_in_executor(None, self._wait_blocking)
            waiter.add_done_callback(lambda _: self._on_exit())
        else:
            self.loop.add_reader(self.pidfd, self._on_exit)
        if self.limits.timeout:
            self.timers.append(self.loop.call_later(self.limits.timeout, self._kill,
                                                    Ending.TIMED_OUT))
        if self.limits.max_silent_time:
            self.timers.append(self.loop.call_later(self.limits.max_silent_time,
                                                    self._check_silence))
        try:
            await self.done
        finally:
            self._cleanup()
        returncode = self.proc.returncode
        return ProcessEnd(self.ending, -signal.SIGKILL if returncode is None else returncode,
                          self.log_closed)

    def _wait_blocking(self) -> None:
        os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.read_fd)
            self.timers.append(self.loop.call_later(LOG_CLOSED_GRACE, self._on_log_closed))
            return
        self.last_output = self.loop.time()
        self.size += len(data)
        self.on_output(data)
        if self.limits.max_log_size and self.size > self.limits.max_log_size:
            self._kill(Ending.LOG_LIMIT)

    def _on_log_closed(self) -> None:
        if self.done.done() or self.killed:
            return
        if self.shape is Shape.SUPERVISOR:
            pids = _running_children(self.proc.pid)
        else:
            pids = [self.proc.pid]
        if not pids:
            return  # the builder has exited; its supervisor collects the outputs
        if all(_exiting(pid) for pid in pids):
            # Closing its files is the first step of a process's exit: on a loaded
            # machine the rest can take longer than the grace. Look again later.
            self.timers.append(self.loop.call_later(LOG_CLOSED_GRACE, self._on_log_closed))
            return
        self.log_closed = True
        self._kill(Ending.EXITED)

    def _check_silence(self) -> None:
        quiet = self.loop.time() - self.last_output
        if quiet >= self.limits.max_silent_time:
            self._kill(Ending.SILENT)
        else:
            self.timers.append(self.loop.call_later(self.limits.max_silent_time - quiet,
                                                    self._check_silence))

    def _kill(self, ending: Ending) -> None:
        if not self.killed:
            self.killed = True
            self.ending = ending
            kill_group(self.proc.pid)

    def _on_exit(self) -> None:
        if self.done.done() or self.reaping:
            return
        # The builder is a zombie now: kill what it left behind in its group, then
        # take the output that is already in the pipe and reap it.
        kill_group(self.proc.pid)
        self._drain()
        if self.shape is not Shape.COLLECTING:
            self.proc.wait()
            self.done.set_result(None)
            return
        self.reaping = True  # copying the outputs can take long: not on the loop
        if self.pidfd is not None:  # readable until reaped: the loop would spin on it
            self.loop.remove_reader(self.pidfd)
        waiter = self.loop.run_in_executor(None, self.proc.wait)
        waiter.add_done_callback(self._reaped)

    def _reaped(self, _: object) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self.size += len(data)
            self.on_output(data)

    def _cleanup(self) -> None:
        for timer in self.timers:
            timer.cancel()
        if self.proc.returncode is None:  # cancelled (interrupt or another build failed)
            kill_group(self.proc.pid)
            self.proc.wait()
        self.loop.remove_reader(self.read_fd)
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
        os.close(self.read_fd)


PF_EXITING = 0x4  # include/linux/sched.h: set as a process starts exiting


def _exiting(pid: int) -> bool:
    """Whether `pid` is exiting or has exited (then it is a zombie or gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & PF_EXITING)


def _running_children(pid: int) -> list[int]:
    """Children of `pid` that have not exited (zombies do not count)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return []
    running = []
    for child in children:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            running.append(child)
    return running


async def supervise(
    proc: Child, read_fd: int, limits: Limits,
    on_output: Callable[[bytes], None], *, shape: Shape = Shape.PLAIN,
) -> ProcessEnd:
    """Wait for `proc` to end (or be killed by a limit, or for closing its log while
    running); `read_fd` is its output pipe, owned and closed here. `shape`: what
    `proc` is (`Shape`)."""
    return await _Supervisor(proc, read_fd, limits, on_output, shape).run()
