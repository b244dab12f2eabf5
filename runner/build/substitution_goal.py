"""Fetching one store path from a substituter instead of building it.

`substitute` is blocking and SQLite connections belong to one thread, so
each substitution runs in a worker thread with its own `LocalStore`. They
do not take build slots; `max-substitution-jobs` caps how many run at once.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

from runner.build.goal import Goal
from runner.store.local_store import LocalStore
from runner.substituters import substitute as subst
from runner.substituters.substitute import SubstituteResult

if TYPE_CHECKING:
    from runner.build.worker import Worker

# Rejections that mean "this offer is not for us" rather than "delivery failed": as in
# Nix, an untrusted substitute is ignored and the path is built; no --fallback needed.
TRUST_REASONS = frozenset({"unsigned", "untrusted-key", "bad-signature"})


class Substitution(enum.Enum):
    VALID = "valid"
    SUBSTITUTED = "substituted"
    NO_SUBSTITUTERS = "no-substituters"  # nobody (trusted) has it: build it
    INCOMPLETE_CLOSURE = "incomplete-closure"  # it was offered, a reference was not
    FAILED = "failed"  # a substituter had it but could not deliver

    @property
    def ok(self) -> bool:
        return self in (Substitution.VALID, Substitution.SUBSTITUTED)


class SubstitutionGoal(Goal[Substitution]):
    def __init__(self, worker: Worker, path: str, *, repair: bool = False) -> None:
        super().__init__(worker, path)
        self.path = path
        self.repair = repair
        self.result: SubstituteResult | None = None

    async def run(self) -> Substitution:
        worker = self.worker
        if not self.repair and worker.store.is_valid(self.path):
            return Substitution.VALID
        if not worker.substituters:
            return Substitution.NO_SUBSTITUTERS
        async with worker.substitution_slot():
            self.result = await asyncio.to_thread(self._substitute, asyncio.get_running_loop())
        outcome = _outcome(self.result)
        for path in self.result.substituted:
            worker.progress.event(f"fetched '{path}'")
        for rejection in self.result.rejections:
            if rejection.reason in TRUST_REASONS:
                worker.progress.warn(f"ignoring substitute: {rejection.message}")
            else:
                worker.progress.warn(rejection.message)
        return outcome

    def _substitute(self, loop: asyncio.AbstractEventLoop) -> SubstituteResult:
        """In a worker thread: a store connection of its own; warnings go back to the loop."""
        progress = self.worker.progress

        def warn(message: str) -> None:
            loop.call_soon_threadsafe(progress.warn, message)

        def fetching(path: str, url: str) -> None:
            loop.call_soon_threadsafe(progress.substitution_started, path, url)

        settings = self.worker.settings
        with LocalStore(settings.store_dir, settings.state_dir,
                        temp_roots=self.worker.store.temp_roots) as store:
            return subst.substitute(store, self.path, self.worker.substituters, settings,
                                    warn=warn, repair=self.repair, on_fetch=fetching)


def _outcome(result: SubstituteResult) -> Substitution:
    if result.status == subst.VALID:
        return Substitution.VALID
    if result.status == subst.SUBSTITUTED:
        return Substitution.SUBSTITUTED
    if result.status == subst.INCOMPLETE:
        return Substitution.INCOMPLETE_CLOSURE
    if result.status == subst.FAILED and not all(r.reason in TRUST_REASONS
                                                 for r in result.rejections):
        return Substitution.FAILED
    return Substitution.NO_SUBSTITUTERS
