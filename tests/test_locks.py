"""Path locks between real processes: exclusion, stale lock files, SIGKILLed holders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.store.locks import PathLocks, _is_stale, lock_file_path

# Holds a lock on argv[1:] and reports it; exits when its stdin closes.
HOLDER = """
import sys
from runner.store.locks import PathLocks
with PathLocks(sys.argv[1:]):
    print("locked", flush=True)
    sys.stdin.read()
"""

# Enters a critical section N times, logging enter/exit lines into a shared file.
WORKER = """
import os, sys, time
from runner.store.locks import PathLocks
path, log, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(rounds):
    with PathLocks([path]):
        with open(log, "a") as f:
            f.write(f"enter {os.getpid()}\\n")
        time.sleep(0.005)
        with open(log, "a") as f:
            f.write(f"exit {os.getpid()}\\n")
"""


def _holder(*paths: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *paths],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def _finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_lock_and_release_deletes_lock_file(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    with PathLocks([path]) as locks:
        assert os.path.exists(lock_file_path(path))
        assert locks.paths == [path]
    assert not os.path.exists(lock_file_path(path))


def test_keep_lock_file_when_asked(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    with PathLocks([path], delete=False):
        pass
    assert os.path.getsize(lock_file_path(path)) == 0
    with PathLocks([path]):  # a leftover, unmarked lock file is reused
        pass


def test_try_lock_fails_while_another_process_holds(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    holder = _holder(path)
    locks = PathLocks()
    assert not locks.try_lock([path])
    _finish(holder)
    assert locks.try_lock([path])
    locks.unlock()


def test_try_lock_on_several_paths_holds_nothing_on_failure(tmp_path: Path) -> None:
    a, b, c = (str(tmp_path / n) for n in "abc")
    holder = _holder(b)
    locks = PathLocks()
    assert not locks.try_lock([c, a, b])
    assert locks.paths == []
    # a was taken and given back: another locker gets it at once.
    other = PathLocks()
    assert other.try_lock([a, c])
    other.unlock()
    _finish(holder)


def test_same_process_lockers_exclude_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    with PathLocks([path]):
        assert not PathLocks().try_lock([path])


def test_processes_serialise(tmp_path: Path) -> None:
    path, log = str(tmp_path / "p"), str(tmp_path / "log")
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, path, log, "8"]) for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    lines = Path(log).read_text().splitlines()
    assert len(lines) == 4 * 8 * 2
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("enter ")
        assert leave == "exit " + enter.split()[1]
    assert not os.path.exists(lock_file_path(path))


def test_sigkilled_holder_releases_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    holder = _holder(path)
    waiter = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=60) == -signal.SIGKILL
    assert waiter.stdout is not None
    assert waiter.stdout.readline() == "locked\n"  # the blocked waiter proceeds
    _finish(waiter)
    locks = PathLocks()
    assert locks.try_lock([path])
    locks.unlock()


def test_stale_lock_file_is_detected(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    lock_path = lock_file_path(path)
    locks = PathLocks([path])
    # A waiter that opened the lock file before the holder released it...
    fd = os.open(lock_path, os.O_RDWR)
    try:
        assert not _is_stale(fd, lock_path)
        locks.unlock()
        # ...holds a file that is no longer the lock file.
        assert _is_stale(fd, lock_path)
        assert os.fstat(fd).st_size == 1  # the "d" mark, as Nix writes it
    finally:
        os.close(fd)


def test_marked_but_linked_lock_file_is_reset(tmp_path: Path) -> None:
    path = str(tmp_path / "p")
    Path(lock_file_path(path)).write_bytes(b"d")  # a holder failed to unlink it
    with PathLocks([path]):
        assert os.path.getsize(lock_file_path(path)) == 0


def test_unopenable_lock_file_is_a_runner_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as info:
        PathLocks([str(tmp_path / "missing-dir" / "p")])
    assert info.value.reason == "lock"
