"""The lint run covers the tests too: strict mypy over runner/ and tests/ (issue 22)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_checks_runner_and_the_tests_strictly() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True and mypy["warn_unused_ignores"] is True
    assert sorted(mypy["files"]) == ["runner", "tests"] and "packages" not in mypy
    # No override switches strictness off for a test module.
    loose = [o["module"] for o in mypy.get("overrides", [])
             if o.get("ignore_errors") or o.get("disallow_untyped_defs") is False]
    assert all(not str(m).startswith("tests") for m in loose)
    # tox's lint env runs plain `mypy`, so it gets exactly this configuration.
    lint = (ROOT / "tox.ini").read_text().split("[testenv:lint]", 1)[1]
    assert "\n    mypy\n" in lint + "\n"
    # ... with the tests' own dependencies installed (without pytest, mypy fails on tests/).
    extras = next(line for line in lint.splitlines() if line.startswith("extras"))
    assert "test" in extras.split("=", 1)[1].replace(",", " ").split()
