"""Only the derivation's own failures are cached (issue 17, part 4): a full disk and a
run-only `--timeout` say so and leave nothing in the failure cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build_helpers import build, write_spec


def _tmpfs_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a mount namespace: {probe.stderr.decode().strip()}"
    return None


def _build_twice_on_tmpfs(tmp_path: Path, spec: str) -> list[tuple[int, str]]:
    """`runner build` twice with the store dir on a tmpfs (in its own mount namespace; the
    state dir, with the failure cache, stays on disk): first 2 MiB, then grown to 16 MiB.
    Each run's exit code and stderr."""
    runs = [tmp_path / "run1", tmp_path / "run2"]
    script = ('mount -t tmpfs -o size=2m tmpfs "$RUNNER_STORE_DIR" || exit 99; '
              '"$@" 2> "$R1.err"; echo $? > "$R1.rc"; '
              'mount -o remount,size=16m "$RUNNER_STORE_DIR" || exit 99; '
              '"$@" 2> "$R2.err"; echo $? > "$R2.rc"')
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "runner", "build",
         "--sandbox=off", "--no-out-link", spec],
        env=dict(os.environ, R1=str(runs[0]), R2=str(runs[1])), capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [(int(Path(f"{r}.rc").read_text()), Path(f"{r}.err").read_text()) for r in runs]


@pytest.mark.skipif(_tmpfs_works() is not None, reason=f"{_tmpfs_works()}")
def test_a_full_store_file_system_is_not_a_cached_failure(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """derivations:
  big:
    builder: /bin/sh
    args: [-c, 'head -c 3145728 /dev/zero > $out || exit 1']
""")
    (code, err), (again, err2) = _build_twice_on_tmpfs(tmp_path, spec)
    assert code == 100, err
    assert "No space left on device" in err
    assert "the store's file system is full" in err and "not cached" in err
    assert again == 0, err2  # no --rebuild-failed: nothing was cached
    assert "failed previously" not in err2


def test_a_failure_with_room_left_is_still_cached(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the disk check does not excuse the derivation's own failures."""
    spec = write_spec(tmp_path, "derivations:\n  bad: {builder: /bin/sh, args: [-c, 'exit 1']}\n")
    assert build(capsys, spec)[0] == 100
    code, _, err = build(capsys, spec)
    assert code == 100 and "failed previously" in err


def test_a_run_only_timeout_is_not_a_cached_failure(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "slow-once"
    spec = write_spec(tmp_path, f"""derivations:
  slowish:
    builder: /bin/sh
    args: [-c, 'if [ ! -e {marker} ]; then touch {marker}; exec sleep 60; fi; echo > $out']
""")
    code, _, err = build(capsys, "--timeout", "1", spec)
    assert code == 101 and "timed out" in err
    assert os.path.exists(marker)
    code, _, err = build(capsys, spec)
    assert code == 0, err
