"""The Linux namespace sandbox builds run in (see docs/sandbox.md)."""

from runner.sandbox.executor import spawn
from runner.sandbox.plan import SandboxPlan, make_plan
from runner.sandbox.policy import use_sandbox
from runner.sandbox.probe import probe

__all__ = ["SandboxPlan", "make_plan", "probe", "spawn", "use_sandbox"]
