"""Builder process supervision with real processes: exit, limits, and no survivors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

from runner.build.process import Ending, Limits, ProcessEnd, Shape, supervise
from runner.sandbox.served import ServedProcess
from tests.markers import wait_gone


def _run(script: str, limits: Limits) -> tuple[ProcessEnd, bytes]:
    async def main() -> tuple[ProcessEnd, bytes]:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                                stdout=write_fd, stderr=write_fd, start_new_session=True)
        os.close(write_fd)
        out: list[bytes] = []
        end = await supervise(proc, read_fd, limits, out.append)
        return end, b"".join(out)

    return asyncio.run(main())


def _gone(pid: int) -> bool:
    """SIGKILL is delivered asynchronously: wait (on its pidfd) for the kernel to end it."""
    return wait_gone([pid], timeout=5)


def test_exit_status_and_output_are_captured() -> None:
    end, out = _run("echo hello; echo oops >&2; exit 3", Limits())
    assert end == ProcessEnd(Ending.EXITED, 3)
    assert out == b"hello\noops\n"


def test_timeout_kills_builder_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    end, _ = _run(f"sleep 60 & echo $! > {pidfile}; wait", Limits(timeout=1))
    assert end.ending is Ending.TIMED_OUT
    assert end.returncode < 0
    assert _gone(int(pidfile.read_text()))


def test_silence_limit_resets_on_output(tmp_path: Path) -> None:
    # Prints for a while (keeping it alive past the limit), then falls silent.
    pidfile = tmp_path / "child.pid"
    script = (f"sleep 60 & echo $! > {pidfile}; "
              "for i in 1 2 3 4 5 6; do echo tick; sleep 0.3; done; wait")
    end, out = _run(script, Limits(max_silent_time=1))
    assert end.ending is Ending.SILENT
    assert out.count(b"tick") == 6
    assert _gone(int(pidfile.read_text()))


def test_log_size_limit() -> None:
    end, out = _run("while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done", Limits(
        max_log_size=10_000))
    assert end.ending is Ending.LOG_LIMIT
    assert len(out) > 10_000


def test_leftover_background_children_are_killed_when_builder_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    end, _ = _run(f"sleep 60 & echo $! > {pidfile}; exit 0", Limits())
    assert end == ProcessEnd(Ending.EXITED, 0)
    assert _gone(int(pidfile.read_text()))


def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"

    async def main() -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        proc = subprocess.Popen(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
                                stdout=write_fd, stderr=write_fd, start_new_session=True)
        os.close(write_fd)
        task = asyncio.ensure_future(supervise(proc, read_fd, Limits(), lambda _: None))
        await asyncio.sleep(0)  # let supervision start: it owns the process from then on
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert proc.returncode is not None

    asyncio.run(main())
    assert _gone(int(pidfile.read_text()))


def test_a_builder_that_closes_its_log_and_keeps_running_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    end, out = _run(f"echo before; echo $$ > {pid_file}; exec >&- 2>&-; sleep 1000",
                    Limits())
    assert (end.ending, end.returncode, end.log_closed) == (Ending.EXITED, -9, True)
    assert out == b"before\n"
    assert _gone(int(pid_file.read_text()))


def test_a_builder_that_exits_as_its_log_closes_keeps_its_status() -> None:
    for status in (0, 3):
        end, _ = _run(f"echo done; exit {status}", Limits())
        assert (end.returncode, end.log_closed) == (status, False)


def test_a_collecting_reap_runs_off_the_loop_and_the_loop_does_not_spin() -> None:
    """Shape.COLLECTING: reaping copies the outputs (`ServedProcess.on_exit`), on a
    thread. Meanwhile the loop must sleep: the exited process's pidfd stays readable
    until it is reaped, and a loop still watching it would spin on one CPU."""
    seen: dict[str, float] = {}

    def collect() -> None:  # stands in for copying a large output
        seen["collect_thread_is_loop"] = float(threading.get_ident() == loop_thread)
        time.sleep(0.5)

    async def main() -> ProcessEnd:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        popen = subprocess.Popen(["/bin/sh", "-c", "echo done"], stdin=subprocess.DEVNULL,
                                 stdout=write_fd, stderr=write_fd, start_new_session=True)
        os.close(write_fd)
        # Adopt the child the way the C spawn's caller does (our own handle, not Popen's).
        proc = ServedProcess(("/bin/sh",), popen.pid, None, None, on_exit=collect)
        began = time.thread_time()
        end = await supervise(proc, read_fd, Limits(), lambda _: None, shape=Shape.COLLECTING)
        seen["loop_cpu"] = time.thread_time() - began
        popen.returncode = proc.returncode  # reaped by `proc`: keep Popen from waiting
        return end

    loop_thread = threading.get_ident()
    end = asyncio.run(main())
    assert end == ProcessEnd(Ending.EXITED, 0)
    assert seen["collect_thread_is_loop"] == 0.0
    assert seen["loop_cpu"] < 0.25, seen  # a spinning loop burns ~all of the 0.5 s
