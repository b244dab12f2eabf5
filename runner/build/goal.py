"""The goal base: one unit of work per store path, awaited by any number of waiters.

A goal is a coroutine run as one asyncio task, started the first time
something waits for it. The worker's goal table guarantees that two waiters
of the same path share one goal; waiters/waitees are recorded so reports
can say which dependency held a goal up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from runner.build.worker import Worker

T = TypeVar("T")
U = TypeVar("U")


class Goal(Generic[T]):
    """Subclasses implement `run()`; everyone else calls `wait()` or `wait_for()`."""

    def __init__(self, worker: Worker, key: str) -> None:
        self.worker = worker
        self.key = key
        self.waiters: set[Goal[object]] = set()
        self.waitees: set[Goal[object]] = set()
        self._task: asyncio.Task[T] | None = None

    async def run(self) -> T:
        raise NotImplementedError

    def start(self) -> asyncio.Task[T]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.key)
            self.worker.track(self._task)
        return self._task

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait_for(self, goals: Iterable[Goal[U]]) -> list[U]:
        """Start `goals` and wait until all have ended; results in the given order."""
        goals = list(goals)
        for goal in goals:
            self.waitees.add(goal)  # type: ignore[arg-type]
            goal.waiters.add(self)  # type: ignore[arg-type]
        if not goals:
            return []
        tasks = [goal.start() for goal in goals]
        pending = [t for t in tasks if not t.done()]
        if pending:
            await _all_done(pending)
        for task in tasks:  # the first failure, as gather would raise it
            if task.done() and (task.cancelled() or task.exception() is not None):
                task.result()
        return [task.result() for task in tasks]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"


async def _all_done(tasks: list[asyncio.Task[U]]) -> None:
    """Wait until every task ended, or one raised. Cheaper than gather(shield(…)) for
    many waitees (a layer of 100 dependencies), and like it a cancelled waiter does
    not cancel goals that other waiters share: only a done-callback is attached."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    remaining = len(tasks)

    def one_done(task: asyncio.Task[U]) -> None:
        nonlocal remaining
        remaining -= 1
        failed = task.cancelled() or task.exception() is not None
        if (remaining == 0 or failed) and not ended.done():
            ended.set_result(None)

    for task in tasks:
        task.add_done_callback(one_done)
    try:
        await ended
    finally:
        for task in tasks:
            task.remove_done_callback(one_done)
