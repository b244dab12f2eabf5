"""`runner hash file|path`: what nix-hash computes, from any readable file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runner.cli.main import run


def test_hash_file_reads_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    read, write = os.pipe()  # what `runner hash file <(printf …)` hands over
    os.write(write, b"through a pipe\n")
    os.close(write)
    try:
        assert run(["hash", "file", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"through a pipe\n").hexdigest()


def test_hash_file_refuses_a_directory(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["hash", "file", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: '{tmp_path}' is a directory")
