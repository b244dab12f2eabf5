"""A build ends when its builder closes its log, sandboxed or not (issue 21), as in Nix 2.8:
the builder is killed and the build fails (`failed due to signal 9`, exit 100)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build_helpers import write_spec

HANG = 60  # seconds: a run still going by then hangs


@pytest.mark.parametrize("sandbox", ["off", "on"])
def test_builder_closing_its_log_and_running_on_is_killed(tmp_path: Path, sandbox: str) -> None:
    if sandbox == "on":
        from runner.sandbox.availability import probe

        assert probe() is None
    spec = write_spec(tmp_path, """derivations:
  quiet: {builder: /bin/sh, args: [-c, 'echo closing; exec >&- 2>&-; sleep 1000']}
  fine: {builder: /bin/sh, args: [-c, 'echo ok > $out']}
""")
    argv = [sys.executable, "-m", "runner", "build", "--no-out-link", "--json", "-k",
            f"--sandbox={sandbox}", "--option", "sandbox-fallback", "false", spec]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail("the build did not end when its builder closed its log")
    assert done.returncode == 100, done.stderr
    by_name = {r["drvPath"].rsplit("-", 1)[1]: r for r in json.loads(done.stdout)}
    assert by_name["fine.drv"]["status"] == "built"
    quiet = by_name["quiet.drv"]
    assert quiet["status"] == "failed" and quiet["exitStatus"] == -9, done.stderr
    assert "failed due to signal 9" in done.stderr and "closing" in done.stderr
