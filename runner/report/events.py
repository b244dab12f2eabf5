"""`--json-events FILE`: one JSON object a line, written and flushed as each event happens.

The shape is `schemas/events.schema.json`; every event has `event`, `time` (seconds on
the monotonic clock since the run started) and, where it concerns one derivation,
`drvPath`. Readers tail the file (Bazel's BEP and Nix's `internal-json` serve the same).
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from runner.build.result import BuildResult, Status

EVENTS = (
    "run-started", "build-started", "substitution-started", "log-line", "build-finished",
    "cached-failure", "skipped", "run-finished",
)


class EventStream:
    """Writes events to an open text stream; `close` ends it (not stdout)."""

    def __init__(self, stream: TextIO, *, logs: bool = False, owned: bool = True) -> None:
        self.stream = stream
        self.logs = logs
        self.owned = owned
        self.started = time.monotonic()

    def emit(self, event: str, drv_path: str | None = None, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        record: dict[str, Any] = {"event": event,
                                  "time": round(time.monotonic() - self.started, 6)}
        if drv_path is not None:
            record["drvPath"] = drv_path
        record.update(fields)
        self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        self.stream.flush()

    # -- the worker's events, in the shape of `Progress`

    def run_started(self, argv: list[str], targets: list[str]) -> None:
        self.emit("run-started", argv=argv, targets=targets)

    def build_started(self, drv_path: str, name: str, attempt: int = 1) -> None:
        self.emit("build-started", drv_path, name=name, attempt=attempt)

    def substitution_started(self, path: str, url: str, drv_path: str | None = None) -> None:
        """`path` (a store path; `drvPath` the derivation it is an output of, when one
        asked for it) starts downloading from the substituter `url`."""
        self.emit("substitution-started", drv_path, path=path, url=url,
                  name=path.rsplit("/", 1)[-1].split("-", 1)[-1])

    def log_line(self, drv_path: str, line: bytes) -> None:
        if self.logs:
            self.emit("log-line", drv_path, line=line.decode("utf-8", "replace").rstrip("\n"))

    def finished(self, result: BuildResult, name: str) -> None:
        duration = round(max(0.0, result.stop_time - result.start_time), 6)
        if result.status is Status.CACHED_FAILURE:
            self.emit("cached-failure", result.drv_path, name=name, message=result.message,
                      logTail=result.log_tail)
        elif result.status is Status.DEPENDENCY_FAILED:
            self.emit("skipped", result.drv_path, name=name,
                      rootCause=result.failed_dependency or "")
        else:
            fields: dict[str, Any] = {"name": name, "status": result.label,
                                      "duration": duration}
            if result.attempts > 1:
                fields.update(attempt=result.attempt, attempts=result.attempts)
                if result.detail:
                    fields["detail"] = result.detail
            if not result.status.ok:
                fields["message"] = result.message
                if result.exit_status is not None:
                    fields["exitStatus"] = result.exit_status
            self.emit("build-finished", result.drv_path, **fields)

    def run_finished(self, counts: dict[str, int], exit_code: int, elapsed: float) -> None:
        self.emit("run-finished", counts=counts, exitCode=exit_code, elapsed=round(elapsed, 6))

    def close(self) -> None:
        if self.owned:
            self.stream.close()
