"""What the user sees on stderr while building; stdout stays for paths and JSON.

On a terminal: one live status line, redrawn in place, with any messages
and -L log lines printed above it. Elsewhere: one plain line per event.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

from runner.build.result import BuildResult, Status


class Progress:
    """Counts and plain event lines; `LiveProgress` adds the status line."""

    def __init__(self, stream: TextIO, *, log_lines: int, print_build_logs: bool) -> None:
        self.stream = stream
        self.log_lines = log_lines
        self.print_build_logs = print_build_logs
        self.known: set[str] = set()
        self.running: dict[str, str] = {}  # drv path -> name
        self.counts = {"built": 0, "substituted": 0, "failed": 0}

    # -- events from the worker

    def expect(self, drv_path: str) -> None:
        self.known.add(drv_path)

    def started(self, drv_path: str, name: str) -> None:
        self.running[drv_path] = name
        self.event(f"building '{drv_path}'...")

    def finished(self, result: BuildResult) -> None:
        self.running.pop(result.drv_path, None)
        if result.status is Status.BUILT:
            self.counts["built"] += 1
        elif result.status is Status.SUBSTITUTED:
            self.counts["substituted"] += 1
        elif not result.status.ok:
            self.counts["failed"] += 1
            self.report_failure(result)
        self.redraw()

    def build_log(self, name: str, lines: list[bytes]) -> None:
        if self.print_build_logs:
            for line in lines:
                self.message(f"{name}> {line.decode('utf-8', 'replace').rstrip()}")

    def warn(self, text: str) -> None:
        self.message(f"warning: {text}")

    def report_failure(self, result: BuildResult) -> None:
        if result.status is Status.DEPENDENCY_FAILED:
            self.message(f"error: {result.message}")
            return
        text = [f"error: {result.message}"]
        tail = result.log_tail[-self.log_lines:] if self.log_lines else []
        if tail and not self.print_build_logs:
            text.append(f"       last {len(tail)} log lines:")
            text.extend(f"       > {line}" for line in tail)
        if result.log_path:
            text.append(f"       run 'runner log {result.drv_path}' for the full log")
        if result.status is Status.CACHED_FAILURE:
            text.append("       pass --rebuild-failed to try building it again")
        self.message("\n".join(text))

    # -- output

    def event(self, text: str) -> None:
        self.message(text)

    def message(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def redraw(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status_line(self) -> str:
        done = sum(self.counts.values())
        remaining = max(len(self.known) - done - len(self.running), 0)
        parts = [f"{self.counts['built']} built", f"{len(self.running)} running"]
        if self.counts["substituted"]:
            parts.append(f"{self.counts['substituted']} substituted")
        if self.counts["failed"]:
            parts.append(f"{self.counts['failed']} failed")
        parts.append(f"{remaining} remaining")
        line = "[" + ", ".join(parts) + "]"
        if self.running:
            line += " building " + ", ".join(sorted(self.running.values()))
        return line


class LiveProgress(Progress):
    """One status line at the bottom of the terminal, throttled to ~20 redraws a second."""

    def __init__(self, stream: TextIO, *, log_lines: int, print_build_logs: bool) -> None:
        super().__init__(stream, log_lines=log_lines, print_build_logs=print_build_logs)
        self._shown = False
        self._last_draw = 0.0

    def event(self, text: str) -> None:
        self.redraw()  # events are the status line's business on a terminal

    def message(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._draw()

    def redraw(self) -> None:
        now = time.monotonic()
        if now - self._last_draw >= 0.05 or not self.running:
            self._clear()
            self._draw()

    def close(self) -> None:
        self._clear()
        self.stream.flush()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        line = self.status_line()
        if len(line) > width - 1:
            line = line[: max(width - 4, 1)] + "..."
        self.stream.write(line)
        self.stream.flush()
        self._shown = True
        self._last_draw = time.monotonic()


def make_progress(*, log_lines: int, print_build_logs: bool,
                  stream: TextIO | None = None) -> Progress:
    stream = sys.stderr if stream is None else stream
    live = stream.isatty() and os.environ.get("TERM", "dumb") != "dumb"
    cls = LiveProgress if live else Progress
    return cls(stream, log_lines=log_lines, print_build_logs=print_build_logs)
