"""Fetching one store path from a substituter instead of building it.

Substituters are not wired in yet: a substitution goal reports the path as
already valid or as having no substituter, and the derivation goal builds.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from runner.build.goal import Goal

if TYPE_CHECKING:
    from runner.build.worker import Worker


class Substitution(enum.Enum):
    VALID = "valid"
    SUBSTITUTED = "substituted"
    NO_SUBSTITUTERS = "no-substituters"  # nobody has it: build it
    FAILED = "failed"  # a substituter had it but could not deliver


class SubstitutionGoal(Goal[Substitution]):
    def __init__(self, worker: Worker, path: str) -> None:
        super().__init__(worker, path)
        self.path = path

    async def run(self) -> Substitution:
        if self.worker.store.is_valid(self.path):
            return Substitution.VALID
        return Substitution.NO_SUBSTITUTERS
