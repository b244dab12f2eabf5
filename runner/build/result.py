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

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "drvPath": self.drv_path,
            "status": self.status.value,
            "outputs": dict(sorted(self.outputs.items())),
            "startTime": round(self.start_time, 3),
            "stopTime": round(self.stop_time, 3),
            "logPath": self.log_path,
        }
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
