"""Build logs: streamed into `<state>/log/drvs/XX/rest.bz2` as Nix stores them.

A sink is written while the builder runs; it keeps the last lines in memory
so a failure can be reported without reading the file back.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import os
import shutil
from typing import BinaryIO

from runner.build.background import Background
from runner.errors import RunnerError

LOG_SUFFIX = ".bz2"


def log_path(state_dir: str, drv_path: str) -> str:
    base = os.path.basename(drv_path)
    return os.path.join(state_dir, "log", "drvs", base[:2], base[2:] + LOG_SUFFIX)


def attempt_log_path(state_dir: str, drv_path: str, attempt: int) -> str:
    """Where an earlier attempt's log goes when the build is retried: the last attempt's
    log is at `log_path`, as Nix keeps it; attempts 1…n-1 next to it."""
    base = log_path(state_dir, drv_path).removesuffix(LOG_SUFFIX)
    return f"{base}.attempt-{attempt}{LOG_SUFFIX}"


def junit_kept_path(state_dir: str, drv_path: str, attempt: int) -> str:
    """The directory keeping the JUnit XML of a failed attempt (runner/report/junit.keep)."""
    return log_path(state_dir, drv_path).removesuffix(LOG_SUFFIX) + f".attempt-{attempt}.junit"


def attempts_logged(state_dir: str, drv_path: str) -> int:
    """How many attempts the last build of `drv_path` had logs for (0: no log)."""
    if not os.path.exists(log_path(state_dir, drv_path)):
        return 0
    count = 1
    while os.path.exists(attempt_log_path(state_dir, drv_path, count)):
        count += 1
    return count


def drop_attempts(state_dir: str, drv_path: str) -> None:
    """Forget an earlier build's attempts (logs and kept JUnit XML) as a new one starts.
    Attempts count from 1, so without an attempt-1 file there is nothing (two stats,
    not a directory listing, on every build)."""
    if not (os.path.lexists(attempt_log_path(state_dir, drv_path, 1))
            or os.path.lexists(junit_kept_path(state_dir, drv_path, 1))):
        return
    base = os.path.basename(log_path(state_dir, drv_path).removesuffix(LOG_SUFFIX))
    directory = os.path.dirname(log_path(state_dir, drv_path))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(base + ".attempt-"):
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def read_attempt_log(state_dir: str, drv_path: str, attempt: int | None) -> bytes | None:
    """The log of one attempt (`None`: the last), or None when there is none. An attempt
    out of range is an error naming how many there were."""
    count = attempts_logged(state_dir, drv_path)
    if attempt is None or (count and attempt == count):
        return read_log(state_dir, drv_path)
    if not count:
        return None
    if not 1 <= attempt <= count:
        raise RunnerError(f"'{drv_path}' was built in {count} attempt"
                          f"{'s' if count != 1 else ''}; --attempt {attempt} is not one of "
                          f"them (1…{count})", reason="usage")
    return _read(attempt_log_path(state_dir, drv_path, attempt))


def read_log(state_dir: str, drv_path: str) -> bytes | None:
    """The stored log of `drv_path`, or None when there is none."""
    return _read(log_path(state_dir, drv_path))


def _read(path: str) -> bytes | None:
    try:
        with bz2.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError) as e:
        raise RunnerError(f"cannot read build log '{path}': {e}", reason="bad-log") from None


class LogSink:
    """Compresses a build's output to its log file and remembers the tail.

    A small log stays in memory and is written when the build ends (by
    `background` when given, off the event loop); a large one is streamed to
    a temporary file from the moment it outgrows `SPILL_SIZE`.
    """

    SPILL_SIZE = 1 << 20  # compressed bytes

    def __init__(self, path: str, tail_lines: int, background: Background | None = None
                 ) -> None:
        self.path = path
        self.size = 0
        self._tail: collections.deque[bytes] = collections.deque(maxlen=max(tail_lines, 1))
        self._partial = b""
        self._compressor = bz2.BZ2Compressor(9)
        self._background = background
        self._held: list[bytes] = []
        self._held_size = 0
        self._file: BinaryIO | None = None
        self._closed = False
        # Written under a temporary name: a crash never leaves a truncated log
        # in place of a complete one from an earlier build.
        self._tmp = f"{path}.tmp-{os.getpid()}"

    def write(self, data: bytes) -> list[bytes]:
        """Record `data`; returns the complete lines it finished (for -L printing)."""
        self.size += len(data)
        self._store(self._compressor.compress(data))
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self._tail.extend(lines)
        return lines

    def _store(self, compressed: bytes) -> None:
        if self._file is not None:
            self._file.write(compressed)
            return
        self._held.append(compressed)
        self._held_size += len(compressed)
        if self._held_size > self.SPILL_SIZE:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115  (closed in close())
            self._file.writelines(self._held)
            self._held = []

    def tail(self) -> list[str]:
        lines = list(self._tail)
        if self._partial:
            lines = [*lines, self._partial][-len(lines) - 1 :]
            lines = lines[-(self._tail.maxlen or 1) :]
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush_partial(self) -> bytes:
        """The unterminated last line, if any (printed when the build ends)."""
        return self._partial

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store(self._compressor.flush())
        if self._file is not None:
            self._file.close()
            os.replace(self._tmp, self.path)
        elif self._background is not None:
            self._background.submit(_write_file, self.path, self._tmp, b"".join(self._held))
        else:
            _write_file(self.path, self._tmp, b"".join(self._held))
        self._held = []

    def discard(self) -> None:
        self._closed = True
        self._held = []
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _write_file(path: str, tmp: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
