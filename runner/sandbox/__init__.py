"""The Linux namespace sandbox builds run in (see docs/sandbox.md).

The names below are loaded on first use, not when the package is imported:
the fork server imports `runner.sandbox.forkserver`, which must not pull in
the executor (and the settings) through this module, and no module of the
package imports one that imports it back (tests/test_sandbox_imports.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.sandbox.availability import probe
    from runner.sandbox.executor import spawn
    from runner.sandbox.plan import SandboxPlan, make_plan
    from runner.sandbox.policy import use_sandbox

__all__ = ["SandboxPlan", "make_plan", "probe", "spawn", "use_sandbox"]

_HOMES = {"spawn": "executor", "SandboxPlan": "plan", "make_plan": "plan",
          "use_sandbox": "policy", "probe": "availability"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'runner.sandbox' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"runner.sandbox.{home}"), name)
    globals()[name] = value
    return value
