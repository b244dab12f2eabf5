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


def _host_has_pytest() -> bool:
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    return python is not None and subprocess.run(
        [python, "-c", "import pytest"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _host_has_pytest(), reason="host python3 has no pytest")
def test_python_package(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = build(capsys, str(SPECS / "python-package.yaml"))
    assert code == 0, err
    assert "1 passed" in Path(out.strip()).read_text()
