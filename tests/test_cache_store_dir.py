"""`runner copy --to` and `runner cache serve` say which store dir the cache is for: only
machines with that `store-dir` can use it (issue 23, sharing a cache across machines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli.main import run

ROOT = Path(__file__).resolve().parent.parent


def serve_line(*argv: str) -> str:
    """The first line `runner cache serve` prints; the server is then stopped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "cache", "serve", "--port", "0",
                             *argv], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        return proc.stderr.readline().rstrip("\n")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_copy_and_serve_name_the_store_dir(tmp_path: Path, store_dir: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "f.txt"
    source.write_text("hello\n")
    assert run(["store", "add", str(source)]) == 0
    path = capsys.readouterr().out.strip()
    cache = tmp_path / "cache"
    assert run(["copy", "--to", f"file://{cache}", path]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"cache 'file://{cache}' is for store dir '{store_dir}': every machine "
                       f"using it needs store-dir = {store_dir}")
    line = serve_line(str(cache))
    assert line.startswith(f"serving {cache} on http://127.0.0.1:")
    assert line.endswith(f"(for store dir '{store_dir}')")
    assert serve_line().endswith(f"(for store dir '{store_dir}')")  # --store
    empty = tmp_path / "empty"
    empty.mkdir()
    assert serve_line(str(empty)).endswith(
        "(no nix-cache-info yet: the first `runner copy --to` sets its store dir)")
