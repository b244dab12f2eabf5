"""Waiting on what a builder says, not on the clock.

`Markers(path)` makes a FIFO that builders write lines to (`echo NAME > PATH`) and the
test reads with a deadline (builders test `[ -p PATH ]` first: it exists only while
the test listens). It is held open for reading and writing, so a writer never
blocks and the reader never sees end-of-file. `wait_gone(pids)` waits for processes
(not necessarily children) to end, on their pidfds.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from types import TracebackType


class Markers:
    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.seen: list[str] = []
        self._buffer = b""

    def next(self, timeout: float = 30) -> str:
        """The next line a builder wrote; AssertionError if none comes in `timeout`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            assert ready, f"no marker in {timeout}s (seen: {self.seen})"
            self._buffer += os.read(self.fd, 4096)
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.seen.append(line.decode())
        return self.seen[-1]

    def wait_for(self, *wanted: str, timeout: float = 30) -> str:
        """Read markers until one of `wanted`; return it."""
        deadline = time.monotonic() + timeout
        while (line := self.next(max(deadline - time.monotonic(), 0))) not in wanted:
            pass
        return line

    def wait_all(self, *wanted: str, timeout: float = 30) -> None:
        """Read markers until each of `wanted` has come (in any order)."""
        deadline = time.monotonic() + timeout
        missing = set(wanted)
        while missing:
            missing.discard(self.next(max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        """Stop listening: the FIFO goes too, so later builders see no `-p PATH` and do
        not block writing to a FIFO nobody reads."""
        self.path.unlink()
        os.close(self.fd)

    def __enter__(self) -> Markers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    """True once every process of `pids` has ended (a zombie has), False at the deadline."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        finally:
            os.close(fd)
        if not ready:
            return False
    return True
