"""Controls for tests/markers.py: the waits do wait, and do see what they wait for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.markers import Markers, wait_gone


def test_wait_gone_sees_a_live_process_then_its_end() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert not wait_gone([proc.pid], timeout=0.2)  # alive: the wait runs out
    finally:
        proc.kill()
    assert wait_gone([proc.pid], timeout=5)  # a zombie has ended
    proc.wait()
    assert wait_gone([proc.pid], timeout=0)  # no such process any more


def test_markers_come_in_order_and_a_missing_one_fails(tmp_path: Path) -> None:
    with Markers(tmp_path / "m") as markers:
        subprocess.run(["/bin/sh", "-c", f"echo one > {markers.path}; echo two > {markers.path}"],
                       check=True, timeout=10)
        assert markers.wait_for("two") == "two" and markers.seen == ["one", "two"]
        with pytest.raises(AssertionError, match="no marker"):
            markers.next(timeout=0.1)
    assert not (tmp_path / "m").exists()  # builders that test `-p` no longer write
