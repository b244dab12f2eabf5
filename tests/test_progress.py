"""The build status line on a real terminal and the summary every build ends with."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.build_helpers import build, write_spec

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^(\d+) built, (\d+) substituted, (\d+) cached, (\d+) failed"
                     r"(, \d+ not built \(a dependency failed\))? in \d+\.\d\ds$")

# Each builder says it started, then waits until the test lets it go: both are
# provably running at once, and nothing finishes while the test reads the screen.
WAITING = """\
derivations:
{names}
"""
ONE = """\
  {name}:
    builder: /bin/sh
    args: ["-c", "touch {marks}/{name}.started; until [ -e {marks}/go ]; do sleep 0.02; done;
                  echo {name} > $out"]
"""


def _read_until(fd: int, pattern: bytes, seen: bytearray, deadline: float) -> bool:
    while pattern not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return pattern in seen
            if not chunk:
                return pattern in seen
            seen += chunk
    return True


@pytest.mark.slow
def test_status_line_shows_both_running_builds_then_a_summary(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = write_spec(tmp_path, WAITING.format(names="".join(
        ONE.format(name=n, marks=marks) for n in ("left", "right"))))
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "build", spec, "-j2",
                             "--sandbox", "off", "--no-out-link"],
                            stdin=secondary, stdout=subprocess.DEVNULL, stderr=secondary,
                            env=env, cwd=tmp_path)
    os.close(secondary)
    seen = bytearray()
    try:
        assert _read_until(primary, b"2 running", seen, time.monotonic() + 30), (
            bytes(seen).decode(errors="replace"))
        # The control: both builders really run at once (each waits for `go`).
        deadline = time.monotonic() + 30
        while not all((marks / f"{n}.started").exists() for n in ("left", "right")):
            assert time.monotonic() < deadline, "the builders did not both start"
            select.select([], [], [], 0.01)
        assert b"1 built" not in seen
        (marks / "go").touch()
        assert _read_until(primary, b" failed in ", seen, time.monotonic() + 30)
        _read_until(primary, b"s\r\n", seen, time.monotonic() + 5)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(seen).decode(errors="replace"))
    last = text.replace("\r\n", "\n").rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert SUMMARY.match(last), text
    assert last.startswith("2 built, 0 substituted, 0 cached, 0 failed"), last


def test_every_build_ends_with_a_summary(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """\
derivations:
  ok:
    builder: /bin/sh
    args: ["-c", "echo ok > $out"]
  bad:
    builder: /bin/sh
    args: ["-c", "exit 3"]
  after:
    builder: /bin/sh
    args: ["-c", "cat ${{ bad }} > $out"]
""")
    code, _, err = build(capsys, spec, "ok")
    assert code == 0
    assert err.splitlines()[-1].startswith("1 built, 0 substituted, 0 cached, 0 failed in ")
    code, _, err = build(capsys, spec, "-k")
    assert code == 100
    summary = [line for line in err.splitlines() if SUMMARY.match(line)]
    assert len(summary) == 1
    assert summary[0].startswith(
        "0 built, 0 substituted, 1 cached, 1 failed, 1 not built (a dependency failed) in ")
    # The no-op fast path (eval cache, nothing to build) says so too.
    code, _, err = build(capsys, spec, "ok")
    assert (code, err.splitlines()[-1][:44]) == (0, "0 built, 0 substituted, 1 cached, 0 failed i")


def test_live_display_starts_no_thread() -> None:
    # Builders are forked for the sandbox: the display must not add a refresh thread.
    import threading

    from runner.build.progress import LiveProgress

    primary, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as stream:
            before = threading.active_count()
            progress = LiveProgress(stream, log_lines=0, print_build_logs=True)
            progress.expect("/s/a.drv")
            progress.started("/s/a.drv", "a")
            progress.build_log("a", [b"hello"])
            assert threading.active_count() == before
            progress.close()
        seen = bytearray()
        assert _read_until(primary, b"a> hello", seen, time.monotonic() + 5)
        assert b"1 running" in seen
    finally:
        os.close(primary)
        os.close(secondary)
