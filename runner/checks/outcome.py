"""One check's outcome as the summary shows it, derived from its build result."""

from __future__ import annotations

from dataclasses import dataclass

from runner.build.result import BuildResult, Status


@dataclass(frozen=True)
class Outcome:
    name: str
    drv_path: str
    passed: bool
    how: str  # "new" (ran now), "cached" (result or failure known), "skipped"
    seconds: float
    result: BuildResult | None

    @property
    def skipped(self) -> bool:
        """Did not run: a dependency failed, or the run stopped first (--fail-fast)."""
        return self.how == "skipped"

    @property
    def label(self) -> str:
        if self.result is None:
            return "skipped"
        if self.result.status is Status.DEPENDENCY_FAILED:
            return "dep-failed"
        if self.result.flaky:  # passed, but only on a retry (runner/build/retry.py)
            return "flaky"
        return "pass" if self.passed else "FAIL"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "drvPath": self.drv_path, "passed": self.passed,
                "skipped": self.skipped, "failed": not self.passed and not self.skipped,
                "result": self.label, "how": self.how, "seconds": round(self.seconds, 3),
                "status": self.result.label if self.result else None}


_CACHED = (Status.ALREADY_VALID, Status.SUBSTITUTED, Status.CACHED_FAILURE)


def outcome(name: str, drv_path: str, result: BuildResult | None) -> Outcome:
    if result is None:  # the run stopped before this check (--fail-fast)
        return Outcome(name, drv_path, False, "skipped", 0.0, None)
    if result.status in _CACHED:
        how = "cached"
    elif result.status is Status.DEPENDENCY_FAILED:
        how = "skipped"
    else:
        how = "new"
    seconds = max(result.stop_time - result.start_time, 0.0)
    return Outcome(name, drv_path, result.status.ok, how, seconds, result)
