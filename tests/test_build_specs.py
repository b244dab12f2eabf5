"""The example specs build (with the host's tools, as documented)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.build_helpers import build

SPECS = Path(__file__).parent.parent / "specs"


@pytest.mark.skipif(shutil.which("cc", path="/usr/local/bin:/usr/bin:/bin") is None,
                    reason="no host C compiler")
def test_c_program(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = build(capsys, str(SPECS / "c-program.yaml"))
    assert code == 0, err
    hello, check = out.split()
    assert subprocess.run([f"{hello}/bin/hello"], capture_output=True, text=True,
                          check=True).stdout == "Hello from C, world!\n"
    assert Path(check).read_text() == "Hello from C, runner!\n"


# specs/python-tests.yaml (the test pipeline) is built by tests/test_example_pipelines.py.
