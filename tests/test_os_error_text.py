"""A full disk is reported with the file or operation that failed, never `('None')`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.build.background import Background
from runner.build.logs import _write_file
from runner.errors import RunnerError, os_error_text
from runner.store.staging import io_call, stage_bytes


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: any real write past that fails with ENOSPC (no file name in it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


BIG = b"x" * (1 << 20)


def test_a_background_job_that_fills_the_disk_names_its_file(full_disk: Path) -> None:
    warnings: list[str] = []
    background = Background(warnings.append)
    log = str(full_disk / "log" / "x.drv")
    background.submit(_write_file, log, log + ".tmp", BIG)
    background.close()
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0]  # the probe really hit a full disk
    assert log in warnings[0] and "None" not in warnings[0]


def test_io_call_names_the_operation_when_the_error_has_no_file(full_disk: Path) -> None:
    with pytest.raises(RunnerError) as info:
        io_call("cannot write 'out'", stage_bytes, BIG, str(full_disk / "staged"))
    assert info.value.reason == "io"
    assert info.value.message == "cannot write 'out': No space left on device"


def test_os_error_text_names_the_files_an_error_carries() -> None:
    e = OSError(2, "No such file or directory", "/a", None, "/b")
    assert os_error_text("cannot rename", e) == (
        "cannot rename: No such file or directory ('/a') ('/b')")
    assert os_error_text("cannot read '/a'", OSError(2, "gone", "/a")) == "cannot read '/a': gone"
