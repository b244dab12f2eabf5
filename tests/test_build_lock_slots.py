"""Waiting for another process's output lock holds no build slot (issue 21): a `-j1`
runner whose first derivation is being built elsewhere builds its other ready
derivations meanwhile, as Nix does. Real processes; marker files, no timing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.build_helpers import counts, runner_process, write_spec

HANG = 60  # seconds: bounded waits; nothing below measures time


def _wait_for(marker: Path, *procs: object) -> None:
    deadline = time.monotonic() + HANG
    while not marker.exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{marker.name} never appeared"
        time.sleep(0.01)


def test_a_lock_waiter_builds_other_derivations_meanwhile(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    held, release = tmp_path / "held", tmp_path / "release"
    others = [tmp_path / f"built-b{i}" for i in range(3)]
    # `held` blocks until the test releases it: the first runner holds its lock.
    lines = ["derivations:",
             f"  held: {{builder: /bin/sh, args: [-c, 'echo held >> {counter}; touch {held};"
             f" while [ ! -e {release} ]; do sleep 0.01; done; echo > $out']}}"]
    lines += [f"  b{i}: {{builder: /bin/sh, args: [-c, 'echo b{i} >> {counter}; "
              f"touch {others[i]}; echo > $out']}}" for i in range(3)]
    spec = write_spec(tmp_path, "\n".join(lines) + "\n")
    first = runner_process("build", "--sandbox=off", "--no-out-link", "-j1", spec, "held")
    try:
        _wait_for(held, first)
        # `held` first: before the fix its goal took the only slot and waited on the lock.
        second = runner_process("build", "--sandbox=off", "--no-out-link", "-j1", spec,
                                "held", "b0", "b1", "b2")
        try:
            for marker in others:
                _wait_for(marker, first, second)
            assert not release.exists()  # all built while `held` was still locked
            release.touch()
            out2, err2 = second.communicate(timeout=HANG)
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
        out1, err1 = first.communicate(timeout=HANG)
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert out1.split()[0] == out2.split()[0]  # the second reused the first's output
    assert counts(counter) == {"held": 1, "b0": 1, "b1": 1, "b2": 1}


@pytest.mark.slow
def test_four_j1_runners_build_in_parallel(tmp_path: Path) -> None:
    """Four `-j1` runners over one spec of independent derivations: a runner whose next
    derivation is locked by another builds a different one, so builds run side by side."""
    running, counter = tmp_path / "running", tmp_path / "counter"
    running.mkdir()
    go = tmp_path / "go"
    # Each build announces itself and waits until two builds have run at once.
    lines = ["derivations:"]
    for i in range(4):
        lines.append(
            f"  d{i}: {{builder: /bin/sh, args: [-c, 'echo d{i} >> {counter}; "
            f"touch {running}/d{i}; while [ ! -e {go} ]; do "
            f"if [ $(ls {running} | wc -l) -ge 2 ]; then touch {go}; fi; sleep 0.01; done; "
            f"rm {running}/d{i}; echo > $out']}}")
    spec = write_spec(tmp_path, "\n".join(lines) + "\n")
    names = [f"d{i}" for i in range(4)]
    # The same order in each: before the fix, three of them sat on `d0`'s lock with
    # their only slot, and one build ran at a time (here: never two, so it hung).
    procs = [runner_process("build", "--sandbox=off", "--no-out-link", "-j1", spec, *names)
             for _ in range(4)]
    try:
        outs = [p.communicate(timeout=HANG) for p in procs]
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert counts(counter) == {n: 1 for n in names}
