"""The worker: one asyncio loop owning the goal table, build slots, lock retries and
every running builder; it stops everything on the first failure unless --keep-going,
and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from runner.build.background import Background
from runner.build.build_dirs import BuildDirs
from runner.build.derivation_goal import BuildMode, DerivationGoal, dependencies_failed_message
from runner.build.progress import Progress
from runner.build.remote_builder import RemoteBuilders
from runner.build.result import BuildResult, Status
from runner.build.retry import RetryPolicies
from runner.build.sandboxing import SandboxMode
from runner.build.spawner import Spawner
from runner.build.substitution_goal import SubstitutionGoal
from runner.errors import RunnerError
from runner.sandbox import slots
from runner.settings import Settings
from runner.store import trash
from runner.store.derivation import Derivation
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks
from runner.substituters.base import Substituter, SubstituterDecl
from runner.substituters.configure import open_substituters

# Retrying a lock held by another process: first after 5 ms, backing off to 1 s.
LOCK_RETRY_FIRST = 0.005
LOCK_RETRY_MAX = 1.0
CLOSURE_CACHE_SIZE = 64  # input closures remembered (see `Worker.input_closure`)


class Worker:
    def __init__(
        self, store: LocalStore, settings: Settings, progress: Progress,
        choose_sandbox: Callable[[], SandboxMode], *,
        rebuild_failed: bool = False, declared_substituters: Sequence[SubstituterDecl] = (),
        mode: BuildMode = BuildMode.NORMAL, known: dict[str, Derivation] | None = None,
    ) -> None:
        """`known`: derivations the caller already has (path → derivation, as
        `instantiate(written=…)` gives them); each goal takes its own out of it instead of
        reading and parsing the `.drv` again (one copy in memory, not two)."""
        self.store = store
        self._known = known if known is not None else {}
        self.settings = settings
        self.progress = progress
        self._choose_sandbox = choose_sandbox
        self._sandbox: SandboxMode | None = None
        self.rebuild_failed = rebuild_failed
        self.retry_policies = RetryPolicies()  # the spec's `retries:`/`flaky:`, --retries
        self.mode = mode  # of the requested derivations; --repair also applies to inputs
        self._declared = tuple(declared_substituters)
        self._substituters: list[Substituter] | None = None
        self._substitution_slots: asyncio.Semaphore | None = None
        self.keep_going = settings.flag("keep-going")
        self.max_jobs = settings.number("max-jobs")
        self.derivation_goals: dict[str, DerivationGoal] = {}
        self.substitution_goals: dict[str, SubstitutionGoal] = {}
        self.results: dict[str, BuildResult] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._lock_released: asyncio.Event | None = None
        self._stopping = False
        self.interrupted: int | None = None
        self.background = Background(progress.warn)  # logs, build-dir removal
        self.build_dirs = BuildDirs(settings, self.background)
        self.spawner = Spawner(self.max_jobs)  # sandboxed builds start off the loop
        self._closures: dict[frozenset[str], frozenset[str]] = {}
        self.remote = (RemoteBuilders(settings, before_open=self._probe_sandbox)
                       if settings.text("remote-builders") else None)

    # -- the goal table

    def derivation_goal(self, drv_path: str, mode: BuildMode = BuildMode.NORMAL
                        ) -> DerivationGoal:
        goal = self.derivation_goals.get(drv_path)
        if goal is None:
            drv = self._known.pop(drv_path, None) or self.store.read_derivation(drv_path)
            goal = self.derivation_goals[drv_path] = DerivationGoal(self, drv_path, drv, mode)
            self.progress.expect(drv_path)
        return goal

    def substitution_goal(self, path: str, *, repair: bool = False) -> SubstitutionGoal:
        goal = self.substitution_goals.get(path)
        if goal is None:
            goal = self.substitution_goals[path] = SubstitutionGoal(self, path, repair=repair)
        return goal

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if self._stopping:
            task.cancel()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        # A goal that raised (bad input, store error) ends the run like a failure.
        if not task.cancelled() and task.exception() is not None:
            self.stop()

    def goal_finished(self, result: BuildResult) -> None:
        self.results[result.drv_path] = result
        self.progress.finished(result)
        if not result.status.ok and not self.keep_going:
            self.stop()

    def stop(self) -> None:
        """Cancel every goal: running builders are killed, nothing more is registered."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()

    # -- shared resources

    @property
    def sandbox(self) -> SandboxMode:
        """Decided when the first build starts, so a no-op run prints no sandbox warning."""
        if self._sandbox is None:
            self._sandbox = self._choose_sandbox()
        return self._sandbox

    def _probe_sandbox(self) -> None:
        """Before gRPC exists in this process. The probe forks runner itself, and a fork
        of a process where gRPC runs cannot set up a sandbox (its fork handlers start
        threads in the child, which fail in the new PID namespace): probing later would
        turn the sandbox off for the whole run. Sandboxed builds themselves start from
        fork servers, fresh processes gRPC never touched (runner/sandbox/forkserver.py)."""
        if self.settings.text("sandbox") != "off":
            from runner.sandbox.availability import probe

            probe()

    def sandbox_refusal(self, drv_env: dict[str, str]) -> str | None:
        """Why a sandboxed local build cannot start in this process now: with the fork
        server off (RUNNER_SANDBOX_FORK_SERVER=0) the sandbox is forked from runner, which
        fails once gRPC runs here. An error, never a silent unsandboxed build."""
        if self.remote is None or not self.remote.started:
            return None
        from runner.sandbox import native
        from runner.sandbox.executor import use_fork_server

        if native.module() is not None or use_fork_server():
            return None  # neither clones a process where gRPC runs with fork()
        try:
            if not self.sandbox.enabled_for(drv_env):
                return None
        except RunnerError:
            return None  # the builder reports it
        return ("a sandboxed local build next to remote builds needs the sandbox's C spawn "
                "or its fork server (RUNNER_SANDBOX_FORK_SERVER=0 is set): a sandbox forked "
                "from runner after gRPC started its threads does not work")

    @property
    def substituters(self) -> list[Substituter]:
        """Opened on first use (nothing is contacted until a path is asked for)."""
        if self._substituters is None:
            self._substituters = open_substituters(self.settings, self._declared,
                                                   warn=self.progress.warn)
        return self._substituters

    @asynccontextmanager
    async def substitution_slot(self) -> AsyncIterator[None]:
        """Substitutions do not take build slots; they have their own limit."""
        if self._substitution_slots is None:
            jobs = self.settings.number("max-substitution-jobs")
            self._substitution_slots = asyncio.Semaphore(max(jobs, 1))
        async with self._substitution_slots:
            yield

    @asynccontextmanager
    async def build_slot(self) -> AsyncIterator[None]:
        assert self._slots is not None
        async with self._slots:
            yield

    def input_closure(self, paths: Iterable[str]) -> frozenset[str]:
        """The closure of valid `paths`. Remembered for the last few input sets: the
        nodes of a dense layer share one (a closure of valid paths cannot change while
        they are temp roots)."""
        key = frozenset(paths)
        found = self._closures.get(key)
        if found is None:
            found = frozenset(self.store.compute_closure(key))
            if len(self._closures) >= CLOSURE_CACHE_SIZE:
                del self._closures[next(iter(self._closures))]
            self._closures[key] = found
        return found

    async def lock_paths(self, paths: Iterable[str]) -> PathLocks:
        """Lock `paths` without blocking the loop: retry when a lock of ours is released,
        or after a growing delay (the holder may be another process)."""
        assert self._lock_released is not None
        paths = sorted(paths)
        delay = LOCK_RETRY_FIRST
        locks = PathLocks()
        while not locks.try_lock(paths):
            released = self._lock_released
            try:
                await asyncio.wait_for(released.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, LOCK_RETRY_MAX)
        return locks

    def try_lock_paths(self, paths: Iterable[str]) -> PathLocks | None:
        locks = PathLocks()
        return locks if locks.try_lock(sorted(paths)) else None

    async def wait_lockable(self, paths: Iterable[str]) -> None:
        """Wait, holding nothing, until `paths` are free to lock (another process or goal
        held them)."""
        self.unlock(await self.lock_paths(paths))

    def unlock(self, locks: PathLocks) -> None:
        locks.unlock()
        assert self._lock_released is not None
        self._lock_released.set()
        self._lock_released = asyncio.Event()

    # -- running

    def run(self, drv_paths: list[str]) -> list[BuildResult]:
        """Realise `drv_paths`; one result per path, in order (every goal's result is in
        `self.results`). Raises RunnerError when interrupted."""
        if self.max_jobs == 0 and not self.substituters and self.remote is None:
            need = [p for p in drv_paths if not self._all_valid(p)]
            if need:
                raise RunnerError(
                    f"unable to start any build; either increase '--max-jobs' or enable "
                    f"remote builds ({len(need)} derivations to build)", reason="no-build-slots",
                    exit_code=1)
        try:
            return asyncio.run(self._main(drv_paths))
        finally:
            self.spawner.close()  # every build has ended: its threads may go
            slots.release()  # the staging dirs kept for the next build go too
            trash.drain()  # the staging dirs set aside by sandboxed builds are gone
            self.build_dirs.close()
            self.background.close()
            self.progress.close()
            if self.remote is not None:
                self.remote.close()

    def _all_valid(self, drv_path: str) -> bool:
        drv = self.store.read_derivation(drv_path)
        return all(self.store.is_valid(o.path) for o in drv.outputs.values())

    async def _main(self, drv_paths: list[str]) -> list[BuildResult]:
        loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(max(self.max_jobs, 1))
        self._lock_released = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        goals = [self.derivation_goal(p, self.mode) for p in drv_paths]
        try:
            tasks = [goal.start() for goal in goals]
            await asyncio.gather(*tasks, return_exceptions=True)
            # Drain everything (cancelled goals end in their cleanup code first).
            while pending := [t for t in self._tasks if not t.done()]:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if self.interrupted is not None:
            name = signal.Signals(self.interrupted).name
            raise RunnerError(f"interrupted by {name}", reason="interrupted",
                              exit_code=128 + self.interrupted)
        for task in self._tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        if self._stopping:
            self._dependencies_failed(drv_paths)
        return [self.results[p] for p in drv_paths if p in self.results]

    def _dependencies_failed(self, drv_paths: list[str]) -> None:
        """Without --keep-going the first failure cancels the goals waiting for it. Each
        waiter then ends as Nix's does, `N dependencies of derivation '…' failed to
        build` (N: its own inputs that failed); the requested ones are reported."""
        # Level by level up from the failures (no recursion: a chain may be long); like
        # Nix's, a waiter ends with the failures known when it was woken.
        while True:
            known = dict(self.results)
            for path, goal in self.derivation_goals.items():
                if path in known:
                    continue
                failed = sorted(w.key for w in goal.waitees if isinstance(w, DerivationGoal)
                                and w.key in known and not known[w.key].status.ok)
                if failed:
                    self.results[path] = BuildResult(
                        path, Status.DEPENDENCY_FAILED,
                        message=dependencies_failed_message(path, len(failed)),
                        failed_dependency=failed[0])
            if len(self.results) == len(known):
                break
        for path in drv_paths:
            result = self.results.get(path)
            if result is not None and result.status is Status.DEPENDENCY_FAILED:
                self.progress.finished(result)

    def _on_signal(self, sig: int) -> None:
        if self.interrupted is None:
            self.interrupted = sig
            self.stop()
