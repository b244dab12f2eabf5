"""Choosing, once per run, whether builds are sandboxed (setting `sandbox`).

`on` and `relaxed` use `runner.sandbox` when its probe says namespaces work.
Otherwise `sandbox-fallback` decides: warn once and build unsandboxed, or
refuse with a clear error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.sandbox.executor import spawn
from runner.sandbox.plan import make_plan
from runner.sandbox.probe import probe
from runner.settings import Settings


@dataclass(frozen=True)
class SandboxMode:
    enabled: bool

    def spawn(
        self, *, argv: list[str], env: dict[str, str], build_dir: str,
        closure: Collection[str], outputs: list[str], fixed_output: bool, settings: Settings,
        stdout: int, stderr: int,
    ) -> subprocess.Popen[bytes]:
        plan = make_plan(
            argv=argv, env=env, build_dir=build_dir, store_dir=settings.store_dir,
            closure=closure, outputs=outputs, fixed_output=fixed_output, settings=settings,
        )
        return spawn(plan, stdout=stdout, stderr=stderr)


UNSANDBOXED = SandboxMode(False)
SANDBOXED = SandboxMode(True)


def choose_sandbox(settings: Settings, warn: Callable[[str], None]) -> SandboxMode:
    if settings.get("sandbox") == "off":
        return UNSANDBOXED
    why = probe()
    if why is None:
        return SANDBOXED
    if not settings.get("sandbox-fallback"):
        raise RunnerError(
            f"sandboxing is not available here ({why}); use --sandbox=off or set "
            "sandbox-fallback = true to build unsandboxed", reason="sandbox-unavailable")
    warn(f"sandboxing is not available ({why}); building without a sandbox")
    return UNSANDBOXED
