"""What the user sees on stderr while building; stdout stays for paths and JSON.

On a terminal: one live status line (drawn by `rich`), redrawn in place after
every change of the counts, with any messages and -L log lines printed above
it. Elsewhere: one plain line per event. Either way a build ends with a
one-line summary of what happened and how long it took.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol, TextIO

from runner.build.result import BuildResult, Status

if TYPE_CHECKING:
    from rich.live import Live


class Observer(Protocol):
    """Something else that follows the run (`runner.report.run.RunRecorder`)."""

    def started(self, drv_path: str, name: str, attempt: int = 1) -> None: ...

    def log(self, drv_path: str, lines: list[bytes]) -> None: ...

    def substitution_started(self, path: str, url: str, drv_path: str | None) -> None: ...

    def finished(self, result: BuildResult) -> None: ...


class Progress:
    """Counts and plain event lines; `LiveProgress` adds the status line."""

    def __init__(self, stream: TextIO, *, log_lines: int, print_build_logs: bool) -> None:
        self.stream = stream
        self.log_lines = log_lines
        self.print_build_logs = print_build_logs
        self.known: set[str] = set()
        self.running: dict[str, str] = {}  # drv path -> name
        self.counts = {"built": 0, "substituted": 0, "failed": 0}
        self.cached = 0  # already valid: nothing to do
        self.skipped = 0  # a dependency failed
        self.flaky = 0  # built, but only on a retry
        self.started_at = time.monotonic()
        self.observers: list[Observer] = []
        self._drv_of: dict[str, str] = {}  # name → drv path of the running build
        self._deriver: dict[str, str] = {}  # output path → drv path, while substituting

    # -- events from the worker

    def expect(self, drv_path: str) -> None:
        self.known.add(drv_path)

    def started(self, drv_path: str, name: str, attempt: int = 1, attempts: int = 1) -> None:
        self.running[drv_path] = name
        self._drv_of[name] = drv_path
        again = f" (attempt {attempt}/{attempts})" if attempt > 1 else ""
        self.event(f"building '{drv_path}'{again}...")
        for observer in self.observers:
            observer.started(drv_path, name, attempt)

    def finished(self, result: BuildResult) -> None:
        self.running.pop(result.drv_path, None)
        if result.status is Status.BUILT:
            self.counts["built"] += 1
            if result.flaky:
                self.flaky += 1
                self.message(f"flaky: '{result.drv_path}' ({result.detail})")
        elif result.status is Status.SUBSTITUTED:
            self.counts["substituted"] += 1
        elif result.status is Status.ALREADY_VALID:
            self.cached += 1
        elif result.status is Status.DEPENDENCY_FAILED:
            self.skipped += 1
            self.report_failure(result)
        else:
            self.counts["failed"] += 1
            self.report_failure(result)
        for observer in self.observers:
            observer.finished(result)
        self.redraw()

    def substituting_for(self, paths: list[str], drv_path: str) -> None:
        """The derivation whose outputs `paths` are (for `substitution-started`)."""
        for path in paths:
            self._deriver.setdefault(path, drv_path)

    def substitution_started(self, path: str, url: str) -> None:
        """A download of `path` from the substituter `url` starts."""
        for observer in self.observers:
            observer.substitution_started(path, url, self._deriver.get(path))

    def build_log(self, name: str, lines: list[bytes]) -> None:
        if self.observers and name in self._drv_of:
            for observer in self.observers:
                observer.log(self._drv_of[name], lines)
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

    def summary(self) -> str:
        """The run's last line, as Bazel and Nix end theirs."""
        c = self.counts
        # A flaky build is a built one that needed a retry: said inside the built count.
        flaky = f" ({self.flaky} flaky: passed on a retry)" if self.flaky else ""
        text = (f"{c['built']} built{flaky}, {c['substituted']} substituted, "
                f"{self.cached} cached, {c['failed']} failed")
        if self.skipped:
            text += f", {self.skipped} not built (a dependency failed)"
        return f"{text} in {time.monotonic() - self.started_at:.2f}s"

    def status_line(self) -> str:
        done = sum(self.counts.values()) + self.cached + self.skipped
        remaining = max(len(self.known) - done - len(self.running), 0)
        parts = [f"{self.counts['built']} built", f"{len(self.running)} running"]
        if self.counts["substituted"]:
            parts.append(f"{self.counts['substituted']} substituted")
        if self.counts["failed"]:
            parts.append(f"{self.counts['failed']} failed")
        if self.flaky:
            parts.append(f"{self.flaky} flaky")
        parts.append(f"{remaining} remaining")
        line = "[" + ", ".join(parts) + "]"
        if self.running:
            line += " building " + ", ".join(sorted(self.running.values()))
        return line


class LiveProgress(Progress):
    """One status line at the bottom of the terminal. It is redrawn after every change
    of the counts (starts and ends are few), so it is always exact; messages and log
    lines print above it. `rich` draws it; no refresh thread (auto_refresh off): the
    sandbox forks builders and a process with extra threads is best avoided."""

    def __init__(self, stream: TextIO, *, log_lines: int, print_build_logs: bool) -> None:
        super().__init__(stream, log_lines=log_lines, print_build_logs=print_build_logs)
        self._live: Live | None = None
        self._lock = threading.Lock()  # warnings also come from background threads

    def event(self, text: str) -> None:
        self.redraw()  # events are the status line's business on a terminal

    def message(self, text: str) -> None:
        live = self._start()
        live.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def redraw(self) -> None:
        from rich.text import Text

        self._start().update(Text(self.status_line(), no_wrap=True, overflow="ellipsis"),
                             refresh=True)

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()  # transient: the status line goes, the messages stay
                self._live = None
        self.stream.flush()

    def _start(self) -> Live:
        with self._lock:
            if self._live is None:
                from rich.console import Console
                from rich.live import Live
                from rich.text import Text

                console = Console(file=self.stream, force_terminal=True, highlight=False)
                self._live = Live(Text(self.status_line(), no_wrap=True, overflow="ellipsis"),
                                  console=console, auto_refresh=False, transient=True,
                                  redirect_stdout=False, redirect_stderr=False)
                self._live.start()
            return self._live


def make_progress(*, log_lines: int, print_build_logs: bool,
                  stream: TextIO | None = None) -> Progress:
    stream = sys.stderr if stream is None else stream
    live = stream.isatty() and os.environ.get("TERM", "dumb") != "dumb"
    cls = LiveProgress if live else Progress
    return cls(stream, log_lines=log_lines, print_build_logs=print_build_logs)
