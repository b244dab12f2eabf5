"""Golden files: `assert_golden(name, data)`; RUNNER_TEST_ACCEPT=1 rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent


def assert_golden(name: str, data: bytes) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("RUNNER_TEST_ACCEPT") == "1":
        path.write_bytes(data)
        return
    assert path.exists(), f"missing golden file {path}; run with RUNNER_TEST_ACCEPT=1"
    expected = path.read_bytes()
    assert data == expected, f"output differs from golden file {path}"
