"""Timestamps of a sandboxed spawn's steps, for finding where its milliseconds go.

With `RUNNER_SANDBOX_TRACE=FILE` in runner's environment, each process of a
spawn (runner, fork server, supervisor, builder before its exec) appends
`pid label monotonic_ns` lines to FILE; CLOCK_MONOTONIC is one clock for
every process. Off (the default) a mark costs one dict lookup.
`bench/sandbox_trace.py` turns the lines into a per-step table.
"""

from __future__ import annotations

import os
import time

ENV = "RUNNER_SANDBOX_TRACE"
_kept: list[tuple[int, int]] = []  # (pid, fd): the builder's descriptor, kept across pivots


def keep() -> None:
    """In the builder before its root changes: hold the file open (closed by exec)."""
    fd = _open()
    if fd is not None:
        _kept[:] = [(os.getpid(), fd)]


def mark(label: str) -> None:
    if _kept and _kept[0][0] == os.getpid():
        fd: int | None = _kept[0][1]
        own = False
    else:
        fd, own = _open(), True
    if fd is None:
        return
    try:
        os.write(fd, f"{os.getpid()} {label} {time.monotonic_ns()}\n".encode())
    finally:
        if own:
            os.close(fd)


def active() -> bool:
    """Whether this process traces (RUNNER_SANDBOX_TRACE is set)."""
    return bool(os.environ.get(ENV))


def open_fd() -> int | None:
    """The trace file opened for appending (close-on-exec), or None when not tracing."""
    return _open()


def _open() -> int | None:
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
