"""No module of runner.sandbox imports a module that imports it back (issue 22).

Checked at run time, each module in a fresh interpreter: which runner.sandbox
modules does importing it load? The package `runner.sandbox` is loaded by
every submodule (it is their parent), so it must load none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "runner" / "sandbox"

_LOADS = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules
                        if m == "runner.sandbox" or m.startswith("runner.sandbox."))))
"""


def _loads(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _LOADS, module], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}).stdout
    return set(json.loads(out)) - {module}


def _cycles(loads: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, deps in loads.items() for b in deps
                  if a < b and a in loads.get(b, set()))


def test_no_sandbox_module_imports_one_that_imports_it_back() -> None:
    modules = ["runner.sandbox"] + [f"runner.sandbox.{p.stem}" for p in SANDBOX.glob("*.py")
                                    if p.stem != "__init__"]
    loads = {m: _loads(m) for m in modules}
    assert loads["runner.sandbox"] == set()  # the package loads its names lazily
    assert _cycles(loads) == []
    # The fork server's own imports stay small: not the executor, not the settings.
    assert "runner.sandbox.executor" not in loads["runner.sandbox.forkserver"]


def test_the_check_sees_a_cycle() -> None:
    """Control: the old package (importing the executor, which imports the package)."""
    loads = {"runner.sandbox": {"runner.sandbox.executor"},
             "runner.sandbox.executor": {"runner.sandbox"}}
    assert _cycles(loads) == [("runner.sandbox", "runner.sandbox.executor")]


def test_the_package_still_exports_its_names() -> None:
    code = ("import runner.sandbox.policy\nfrom runner.sandbox import probe, spawn, make_plan\n"
            "print(callable(probe), probe.__module__, spawn.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["True", "runner.sandbox.availability", "runner.sandbox.executor"]
    with pytest.raises(AttributeError):
        import runner.sandbox as package
        getattr(package, "no_such_name")  # noqa: B009

