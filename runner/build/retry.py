"""Flaky tests and retries: how many attempts a derivation gets, and which failures count.

A spec's `retries: N` and `flaky: true` (`retries: 2` unless given) and the CLI's
`--retries N` (for every derivation of the run, overriding the spec) are runner-only:
they never enter the derivation. Only a failure of the builder itself is retried — it
exited non-zero or was killed (by a signal, `timeout` or `max-silent-time`) — as Bazel
retries only failing tests. A hash mismatch, a rejected output (missing, a reference
cycle), a log limit, a set-up problem or a failed dependency would fail the same way
again: they end the derivation at once (docs/test-pipelines.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.build.result import BuildResult, Status

if TYPE_CHECKING:
    from runner.spec.model import Spec

FLAKY_RETRIES = 2  # `flaky: true` without `retries:`, as Bazel's flaky_test_attempts=3
MAX_RETRIES = 10


@dataclass(frozen=True)
class RetryPolicy:
    """What the run does when one derivation's build fails."""

    retries: int = 0
    flaky: bool = False  # a failure is never cached
    junit: str | None = None  # the output whose XML is kept from a failed attempt
    spec: str = ""  # where it comes from, for `runner store flaky list`
    key: str = ""

    @property
    def attempts(self) -> int:
        return self.retries + 1


@dataclass
class RetryPolicies:
    """Per derivation (store) name, as `junit:` is looked up (runner/report/run.py)."""

    by_name: dict[str, RetryPolicy] = field(default_factory=dict)
    override: int | None = None  # --retries N

    @classmethod
    def for_spec(cls, spec: Spec, spec_path: str, override: int | None = None
                 ) -> RetryPolicies:
        by_name = {}
        for key, entry in spec.derivations.items():
            retries = entry.retries
            if retries is None:
                retries = FLAKY_RETRIES if entry.flaky else 0
            by_name[entry.name] = RetryPolicy(retries, entry.flaky, entry.junit,
                                              spec_path, key)
        return cls(by_name, override)

    def get(self, name: str) -> RetryPolicy:
        policy = self.by_name.get(name, RetryPolicy(key=name))
        if self.override is not None:
            policy = RetryPolicy(self.override, policy.flaky, policy.junit, policy.spec,
                                 policy.key)
        return policy


def retryable(result: BuildResult) -> bool:
    """Is this a failure of the builder that another attempt may not repeat?"""
    if result.status is Status.TIMED_OUT:
        return True
    return (result.status is Status.FAILED and result.exit_status is not None
            and result.exit_status != 0)

