"""`--json-events`: every event is one flushed line that the published schema accepts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

from runner.build.result import BuildResult, Status
from runner.report.events import EventStream

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "runner" / "schemas"
                     / "events.schema.json").read_text())


class Flushes(io.StringIO):
    """Counts what was visible to a reader at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def flush(self) -> None:
        self.seen.append(self.getvalue())


def test_events_match_the_schema_and_are_flushed_one_by_one() -> None:
    out = Flushes()
    stream = EventStream(out, logs=True, owned=False)
    stream.run_started(["runner", "build", "s.yaml"], ["/s/a.drv"])
    stream.build_started("/s/a.drv", "a")
    stream.log_line("/s/a.drv", b"hello\n")
    stream.finished(BuildResult("/s/a.drv", Status.BUILT, start_time=1.0, stop_time=1.5), "a")
    stream.finished(BuildResult("/s/b.drv", Status.FAILED, message="builder failed",
                                exit_status=1), "b")
    stream.finished(BuildResult("/s/c.drv", Status.DEPENDENCY_FAILED,
                                failed_dependency="/s/b.drv"), "c")
    stream.finished(BuildResult("/s/d.drv", Status.CACHED_FAILURE, message="cached",
                                log_tail=["x"]), "d")
    stream.run_finished({"built": 1, "failed": 1}, 100, 2.0)
    lines = out.getvalue().splitlines()
    assert len(out.seen) == len(lines) == 8
    assert all(seen.count("\n") == i + 1 for i, seen in enumerate(out.seen))
    events = [json.loads(line) for line in lines]
    for event in events:
        jsonschema.validate(event, SCHEMA)
    assert [e["event"] for e in events] == [
        "run-started", "build-started", "log-line", "build-finished", "build-finished",
        "skipped", "cached-failure", "run-finished"]
    assert events[3]["duration"] == 0.5 and events[5]["rootCause"] == "/s/b.drv"
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_log_lines_only_when_asked() -> None:
    out = io.StringIO()
    EventStream(out, owned=False).log_line("/s/a.drv", b"x\n")
    assert out.getvalue() == ""


def test_schema_rejects_a_finished_event_without_status() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"event": "build-finished", "time": 1, "drvPath": "/s/a.drv",
                             "name": "a", "duration": 1}, SCHEMA)
