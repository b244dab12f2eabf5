"""Choosing, once per run, whether builds are sandboxed (setting `sandbox`).

`on` and `relaxed` use `runner.sandbox` when its probe says namespaces work.
Otherwise `sandbox-fallback` decides: warn once and build unsandboxed, or
refuse with a clear error.
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from runner.errors import RunnerError
from runner.settings import Settings


@dataclass(frozen=True)
class SandboxMode:
    enabled: bool
    plan_module: Any = None
    executor_module: Any = None

    def spawn(
        self, *, argv: list[str], env: dict[str, str], build_dir: str,
        closure: Collection[str], outputs: list[str], fixed_output: bool, settings: Settings,
        stdout: int, stderr: int,
    ) -> subprocess.Popen[bytes]:
        plan = self.plan_module.make_plan(
            argv=argv, env=env, build_dir=build_dir, store_dir=settings.store_dir,
            closure=closure, outputs=outputs, fixed_output=fixed_output, settings=settings,
        )
        proc: subprocess.Popen[bytes] = self.executor_module.spawn(plan, stdout=stdout,
                                                                   stderr=stderr)
        return proc


UNSANDBOXED = SandboxMode(False)


def choose_sandbox(settings: Settings, warn: Callable[[str], None]) -> SandboxMode:
    if settings.get("sandbox") == "off":
        return UNSANDBOXED
    why = _unavailable_reason()
    if why is None:
        return SandboxMode(True, importlib.import_module("runner.sandbox.plan"),
                           importlib.import_module("runner.sandbox.executor"))
    if not settings.get("sandbox-fallback"):
        raise RunnerError(
            f"sandboxing is not available here ({why}); use --sandbox=off or set "
            "sandbox-fallback = true to build unsandboxed", reason="sandbox-unavailable")
    warn(f"sandboxing is not available ({why}); building without a sandbox")
    return UNSANDBOXED


def _unavailable_reason() -> str | None:
    try:
        executor = importlib.import_module("runner.sandbox.executor")
        importlib.import_module("runner.sandbox.plan")
    except ImportError:
        return "this runner has no sandbox support"
    reason: str | None = executor.probe()
    return reason
