"""What `build` and `check` record about a run for `junit:`, `--junit`, `--json-events`
and `--report`: a `Progress` observer that sees each build start, log and finish.

After a derivation with a `junit:` output ends valid (built, substituted or already
there), that output is read and its counts and failing cases are shown under its status.
A failed build registers no output: the XML its failed attempt wrote was kept next to its
log (`BuildResult.junit_kept`) and is read from there, for a cached failure too.
"""

from __future__ import annotations

import collections
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.build.result import BuildResult, Status
from runner.errors import RunnerError
from runner.report import html, junit
from runner.report.events import EventStream

if TYPE_CHECKING:
    from runner.build.progress import Progress
    from runner.spec.model import Spec

SHOWN_CASES = 20  # failing cases shown under a status; the report and --junit have all
TAIL_LINES = 10  # log lines kept per build, shown when its JUnit file cannot be read


def drv_name(drv_path: str) -> str:
    """`/store/<hash>-NAME.drv` → NAME."""
    base = os.path.basename(drv_path)
    return base.split("-", 1)[1].removesuffix(".drv") if "-" in base else base


@dataclass
class Record:
    result: BuildResult
    started: float | None  # wall-clock time the builder started; None: it did not run here
    summary: junit.Summary | None = None
    problem: junit.JunitProblem | None = None


@dataclass
class RunRecorder:
    """Observes the worker through `Progress.observers`; writes the files at the end."""

    progress: Progress
    junit_outputs: dict[str, str]  # derivation (store) name → its `junit:` output
    events: EventStream | None = None
    # a `shards:` gatherer's name → its shards' names: in --junit the shards' suites stand
    # for it (its own cases are theirs again), unless the run never visited them
    gatherers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    wall_start: float = field(default_factory=time.time)
    started_at: dict[str, float] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    tails: dict[str, collections.deque[str]] = field(default_factory=dict)

    @classmethod
    def for_spec(cls, spec: Spec, progress: Progress,
                 events: EventStream | None) -> RunRecorder:
        outputs = {e.name: e.junit for e in spec.derivations.values() if e.junit}
        gatherers = {e.name: tuple(spec.derivations[k].name for k in e.gathers)
                     for e in spec.derivations.values() if e.gathers}
        return cls(progress, outputs, events, gatherers)

    # -- the observer interface (`runner.build.progress.Observer`)

    def started(self, drv_path: str, name: str, attempt: int = 1) -> None:
        if attempt == 1 or drv_path not in self.started_at:  # a bar spans every attempt
            self.started_at[drv_path] = time.time()
        if self.events is not None:
            self.events.build_started(drv_path, name, attempt)

    def log(self, drv_path: str, lines: list[bytes]) -> None:
        if self.junit_outputs.get(drv_name(drv_path)):
            tail = self.tails.setdefault(drv_path, collections.deque(maxlen=TAIL_LINES))
            tail.extend(line.decode("utf-8", "replace").rstrip() for line in lines)
        if self.events is not None:
            for line in lines:
                self.events.log_line(drv_path, line)

    def substitution_started(self, path: str, url: str, drv_path: str | None) -> None:
        if self.events is not None:
            self.events.substitution_started(path, url, drv_path)

    def finished(self, result: BuildResult) -> None:
        record = Record(result, self.started_at.get(result.drv_path))
        self.records[result.drv_path] = record
        name = drv_name(result.drv_path)
        output = self.junit_outputs.get(name)
        xml = (result.outputs.get(output) if output and result.status.ok
               else result.junit_kept)  # a failure's: kept from the failed attempt
        if output and xml:
            parsed = junit.read(xml)
            if isinstance(parsed, junit.JunitProblem):
                record.problem = parsed
            else:
                record.summary = parsed
            self._show(record, name)
        self.tails.pop(result.drv_path, None)
        if self.events is not None:
            self.events.finished(result, name)

    def _show(self, record: Record, name: str) -> None:
        if record.problem is not None:
            lines = [f"warning: {record.problem}"]
            tail = record.result.log_tail or list(self.tails.get(record.result.drv_path, ()))
            lines += [f"       > {line}" for line in tail] if tail else [
                f"       run 'runner log {record.result.drv_path}' for the log"]
            self.progress.message("\n".join(lines))
            return
        summary = record.summary
        assert summary is not None
        lines = [f"{name}: {summary.line()}"]
        for case in summary.failing[:SHOWN_CASES]:
            lines.append(f"  ✗ {case.title}: {case.message}")
            lines += [f"      {line}" for line in case.output]
        if len(summary.failing) > SHOWN_CASES:
            lines.append(f"  … and {len(summary.failing) - SHOWN_CASES} more failing cases")
        self.progress.message("\n".join(lines))

    # -- the end of the run

    def finish(self, exit_code: int) -> None:
        if self.events is not None:
            counts: dict[str, int] = {}
            for record in self.records.values():
                status = record.result.label
                counts[status] = counts.get(status, 0) + 1
            self.events.run_finished(counts, exit_code, time.time() - self.wall_start)

    def write_junit(self, path: str) -> None:
        entries = []
        seen = {drv_name(path) for path in self.records}
        for record in self.records.values():
            result = record.result
            if seen.intersection(self.gatherers.get(drv_name(result.drv_path), ())):
                continue
            cached = result.status in (Status.ALREADY_VALID, Status.CACHED_FAILURE)
            entries.append(junit.SuiteEntry(
                drv_name(result.drv_path), result.drv_path, result.label,
                max(0.0, result.stop_time - result.start_time), record.summary,
                tuple(result.log_tail), cached))
        _write(path, junit.merged(entries))

    def write_report(self, path: str, argv: list[str], exit_code: int) -> None:
        entries = []
        for record in self.records.values():
            result = record.result
            start = record.started if record.started is not None else result.start_time
            cases = tuple(record.summary.failing) if record.summary is not None else ()
            entries.append(html.Entry(
                drv_name(result.drv_path), result.drv_path, result.label,
                max(0.0, start - self.wall_start), max(0.0, result.stop_time - self.wall_start),
                tuple(result.log_tail), cases, result.failed_dependency or "",
                result.detail))
        run = html.Run(argv, time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                           time.localtime(self.wall_start)),
                       time.time() - self.wall_start, exit_code, entries)
        _write(path, html.render(run).encode())


def _write(path: str, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunnerError(f"cannot write '{shlex.quote(path)}': {err.strerror or err}",
                          reason="io-error", exit_code=1) from err


def open_events(path: str | None, logs: bool) -> EventStream | None:
    """`--json-events FILE` (`-`: stdout), or None."""
    if path is None:
        return None
    import sys

    if path == "-":
        return EventStream(sys.stdout, logs=logs, owned=False)
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by the run)
    except OSError as err:
        raise RunnerError(f"cannot write '{path}': {err.strerror or err}",
                          reason="io-error", exit_code=1) from err
    return EventStream(stream, logs=logs)
