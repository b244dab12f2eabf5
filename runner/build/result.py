"""What a goal ends with: a status per derivation, and the process exit code they add up to."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Status(enum.Enum):
    """How one derivation's realisation ended (Nix's BuildResult statuses, trimmed)."""

    BUILT = "built"
    SUBSTITUTED = "substituted"
    ALREADY_VALID = "valid"
    FAILED = "failed"  # builder exited non-zero or its outputs were rejected
    CACHED_FAILURE = "cached-failure"
    DEPENDENCY_FAILED = "dependency-failed"
    TIMED_OUT = "timed-out"  # timeout or max-silent-time
    LOG_LIMIT = "log-limit"
    HASH_MISMATCH = "hash-mismatch"
    SETUP_FAILED = "setup-failed"  # could not even start the builder
    SUBSTITUTION_FAILED = "substitution-failed"  # a substituter had it, did not deliver
    NOT_DETERMINISTIC = "not-deterministic"

    @property
    def ok(self) -> bool:
        return self in (Status.BUILT, Status.SUBSTITUTED, Status.ALREADY_VALID)


# Failures worth remembering: the same inputs would fail the same way again.
PERMANENT = frozenset({Status.FAILED})

# Failures that are not the derivation's (no exit-code bit; see `exit_code`).
MISC = frozenset({Status.DEPENDENCY_FAILED, Status.SETUP_FAILED, Status.SUBSTITUTION_FAILED})


@dataclass
class BuildResult:
    drv_path: str
    status: Status
    outputs: dict[str, str] = field(default_factory=dict)
    message: str = ""
    start_time: float = 0.0
    stop_time: float = 0.0
    log_path: str | None = None
    log_tail: list[str] = field(default_factory=list)
    exit_status: int | None = None
    failed_dependency: str | None = None
    remote_unavailable: bool = False  # a remote endpoint failed it, not the derivation
    attempt: int = 1  # the attempt that ended it, of `attempts` allowed (runner/build/retry.py)
    attempts: int = 1
    junit_kept: str | None = None  # the failed attempt's JUnit XML, kept next to its log

    @property
    def flaky(self) -> bool:
        """Passed, but only on a retry."""
        return self.status is Status.BUILT and self.attempt > 1

    @property
    def label(self) -> str:
        """The status as reports show it: `flaky` for a pass on a retry."""
        return "flaky" if self.flaky else self.status.value

    @property
    def detail(self) -> str:
        """`passed on attempt 2/3`, `failed 3/3 attempts`, or "" for one attempt."""
        if self.attempts <= 1 or self.status not in (Status.BUILT, Status.FAILED,
                                                      Status.TIMED_OUT, Status.CACHED_FAILURE):
            return ""
        if self.status.ok:
            return f"passed on attempt {self.attempt}/{self.attempts}" if self.flaky else ""
        return f"failed {self.attempt}/{self.attempts} attempts"

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "drvPath": self.drv_path,
            "status": self.label,
            "outputs": dict(sorted(self.outputs.items())),
            "startTime": round(self.start_time, 3),
            "stopTime": round(self.stop_time, 3),
            "logPath": self.log_path,
        }
        if self.attempts > 1:
            data["attempt"], data["attempts"] = self.attempt, self.attempts
            if self.detail:
                data["detail"] = self.detail
        if not self.status.ok:
            data["error"] = self.message
            if self.exit_status is not None:
                data["exitStatus"] = self.exit_status
            if self.failed_dependency:
                data["failedDependency"] = self.failed_dependency
        return data


def exit_code(statuses: Iterable[Status]) -> int:
    """Nix's worker exit status: 0x60 plus one bit per kind of build failure seen.

    100 = build failure, 101 = timeout, 102 = hash mismatch, 104 = not
    deterministic; under --keep-going the bits combine (e.g. 103). Failures
    that say nothing about the derivation (set-up, a substituter that did not
    deliver) exit 1 when nothing else failed, as Nix's miscellaneous failures.
    """
    mask = 0
    failed = False
    for status in statuses:
        if status.ok:
            continue
        failed = True
        if status in MISC:
            continue
        if status is Status.NOT_DETERMINISTIC:
            mask |= 0x08
            continue
        mask |= 0x04
        if status is Status.TIMED_OUT:
            mask |= 0x01
        elif status is Status.HASH_MISMATCH:
            mask |= 0x02
    if mask:
        return 0x60 | mask
    return 1 if failed else 0
