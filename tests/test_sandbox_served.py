"""`ServedProcess`: our own handle for a supervisor the fork server cloned (issue 22)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.sandbox import make_plan, probe, spawn
from runner.sandbox.plan import SandboxPlan, default_ids
from runner.sandbox.served import ServedProcess
from runner.settings import Settings

pytestmark = pytest.mark.skipif(sys.platform != "linux" or probe() is not None,
                                reason=f"no sandbox here: {probe()}")


def _plan(tmp_path: Path, script: str) -> SandboxPlan:
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "build").mkdir(exist_ok=True)
    return make_plan(argv=["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"},
                     build_dir=str(tmp_path / "build"), store_dir=str(tmp_path / "store"),
                     closure=[], outputs=[], fixed_output=False,
                     settings=Settings.load(environ={}), ids=default_ids())


def test_a_served_child_is_not_a_popen_and_waits_polls_and_dies_like_one(
        tmp_path: Path) -> None:
    proc = spawn(_plan(tmp_path, "echo started; exec sleep 60"), stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, fork_server=True)
    assert isinstance(proc, ServedProcess) and not isinstance(proc, subprocess.Popen)
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.05)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL == proc.returncode
    assert proc.poll() == -signal.SIGKILL
    proc.send_signal(signal.SIGTERM)  # reaped: a no-op, never a recycled pid
    proc.stdout.close()


def test_communicate_collects_both_pipes_and_the_exit_status(tmp_path: Path) -> None:
    proc = spawn(_plan(tmp_path, "echo out; echo err >&2; exit 3"), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, fork_server=True)
    assert proc.communicate(timeout=30) == (b"out\n", b"err\n")
    assert proc.returncode == 3
