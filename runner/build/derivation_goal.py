"""Realising one derivation: valid already? failed before? substitutable? else inputs
first, then a build slot and the output locks, then build, check and register.

Each step is a small method; the first that settles the outcome returns it.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from runner.build import failure_cache
from runner.build.builder import BuilderOutcome, BuildJob, run_builder
from runner.build.fixed_mismatch import keep_under_real_hash
from runner.build.goal import Goal
from runner.build.logs import LogSink, log_path
from runner.build.outputs import OutputRejected, collect_outputs
from runner.build.platform import local_platform_refusal
from runner.build.process import Ending
from runner.build.rebuild import check_outputs, is_corrupt, repair_outputs
from runner.build.redirect import Redirect
from runner.build.remote_builder import RemoteOutcome
from runner.build.result import PERMANENT, BuildResult, Status
from runner.build.substitution_goal import Substitution
from runner.errors import RunnerError
from runner.store.canonicalise import remove_tree
from runner.store.derivation import Derivation
from runner.store.roots import add_temp_root

if TYPE_CHECKING:
    from runner.build.worker import Worker

_ENDINGS = {
    Ending.TIMED_OUT: Status.TIMED_OUT,
    Ending.SILENT: Status.TIMED_OUT,
    Ending.LOG_LIMIT: Status.LOG_LIMIT,
}


def dependencies_failed_message(drv_path: str, count: int) -> str:
    return f"{count} dependencies of derivation '{drv_path}' failed to build"  # Nix's words


class BuildMode(enum.Enum):
    NORMAL = "normal"
    CHECK = "check"  # build valid outputs again and compare (--check)
    REPAIR = "repair"  # replace corrupt valid outputs (--repair; inputs too)


class DerivationGoal(Goal[BuildResult]):
    def __init__(self, worker: Worker, drv_path: str, mode: BuildMode = BuildMode.NORMAL
                 ) -> None:
        super().__init__(worker, drv_path)
        self.drv_path = drv_path
        self.mode = mode
        self.store = worker.store
        self.settings = worker.settings
        self.drv: Derivation | None = None
        self.outputs: dict[str, str] = {}
        self.input_paths: set[str] = set()
        self.redirect: Redirect | None = None  # --check/--repair: valid outputs built aside
        self.corrupt: set[str] = set()  # --repair: valid outputs whose files are damaged

    async def run(self) -> BuildResult:
        start = time.time()
        result = await self._realise()
        result.outputs = dict(self.outputs)
        result.start_time = start
        result.stop_time = time.time()
        self.worker.goal_finished(result)
        return result

    def _result(self, status: Status, message: str = "", **extra: object) -> BuildResult:
        return BuildResult(self.drv_path, status, message=message, **extra)  # type: ignore[arg-type]

    async def _realise(self) -> BuildResult:
        self.drv = self.store.read_derivation(self.drv_path)
        self.outputs = {name: out.path for name, out in self.drv.outputs.items()}
        for path in self.outputs.values():  # before checking validity, so GC keeps them
            add_temp_root(self.settings.state_dir, path)
        if self.mode is BuildMode.CHECK:
            return await self._check()
        if self.mode is BuildMode.REPAIR:
            self.corrupt = {p for p in self.outputs.values() if is_corrupt(self.store, p)}
        if self._outputs_valid() and not self.corrupt:
            return self._result(Status.ALREADY_VALID)
        if self.worker.rebuild_failed:
            self.store.clear_failures(list(self.outputs.values()))
        # Substitutes first: a path someone else built supersedes our cached failure.
        substitution = await self._substitute()
        if substitution is Substitution.SUBSTITUTED:
            return self._result(Status.SUBSTITUTED)
        if not self.worker.rebuild_failed and (cached := self._cached_failure()):
            return cached
        if substitution is Substitution.FAILED:
            if not self.settings.get("fallback"):
                return self._result(
                    Status.SUBSTITUTION_FAILED,
                    f"some substitutes for the outputs of '{self.drv_path}' failed; "
                    "pass --fallback to build it instead")
            self.worker.progress.warn(f"substitution failed, building '{self.drv_path}' "
                                      "instead (--fallback)")
        if self.corrupt:  # what substitution did not repair is rebuilt aside
            self.corrupt = {p for p in self.corrupt if is_corrupt(self.store, p)}
            self._redirect([p for p in self.outputs.values() if self.store.is_valid(p)])
        return await self._build()

    async def _check(self) -> BuildResult:
        """--check: build again next to the valid outputs and compare."""
        if not self._outputs_valid():
            return self._result(
                Status.SETUP_FAILED,
                f"some outputs of '{self.drv_path}' are not valid, so checking is not possible")
        self._redirect(self.outputs.values())
        return await self._build()

    def _redirect(self, paths: Iterable[str]) -> None:
        assert self.drv is not None
        self.redirect = Redirect.for_outputs(self.drv_path, self.drv, paths,
                                             self.store.store_dir)
        for path in self.redirect.scratch.values():
            add_temp_root(self.settings.state_dir, path)

    async def _build(self) -> BuildResult:
        if failed := await self._realise_inputs():
            return failed
        assert self.drv is not None
        remote = self.worker.remote
        if remote is not None and self.redirect is None and not remote.refusal(self.drv):
            async with remote.slots:  # remote builds take no local build slot
                result = await self._locked(remote=True)
            if not result.remote_unavailable or not self.settings.get("remote-fallback"):
                return result
            self.worker.progress.warn(f"{result.message}; building it locally")
        if refusal := local_platform_refusal(self.drv.system, self.drv_path, self.settings):
            return self._result(Status.SETUP_FAILED, refusal)
        if self.worker.max_jobs == 0:
            raise RunnerError(
                f"unable to build '{self.drv_path}': '--max-jobs' is 0 and no substituter "
                "has its outputs", reason="no-build-slots")
        return await self._build_here()

    def _lock_set(self) -> list[str]:
        scratch = self.redirect.scratch.values() if self.redirect else ()
        return [*self.outputs.values(), *scratch]

    async def _build_here(self) -> BuildResult:
        """A build slot, then the output locks without waiting. Locks that another
        process holds are waited for without a slot (as Nix does), so this runner builds
        other ready derivations meanwhile instead of idling behind a lock."""
        while True:
            async with self.worker.build_slot():
                locks = self.worker.try_lock_paths(self._lock_set())
                if locks is not None:
                    try:
                        return await self._build_locked(locks.fds, remote=False)
                    finally:
                        self.worker.unlock(locks)
            await self.worker.wait_lockable(self._lock_set())

    async def _locked(self, *, remote: bool) -> BuildResult:
        locks = await self.worker.lock_paths(self._lock_set())
        try:
            return await self._build_locked(locks.fds, remote=remote)
        finally:
            self.worker.unlock(locks)

    def _outputs_valid(self) -> bool:
        return all(self.store.is_valid(path) for path in self.outputs.values())

    def _cached_failure(self) -> BuildResult | None:
        if not self.settings.get("cache-failures"):
            return None
        record = failure_cache.find_failure(self.store, self.outputs.values())
        if record is None:
            return None
        has_log = os.path.exists(log_path(self.settings.state_dir, self.drv_path))
        return self._result(
            Status.CACHED_FAILURE, failure_cache.cached_message(self.drv_path, record),
            log_tail=record.log_tail.splitlines(), exit_status=record.exit_status,
            log_path=log_path(self.settings.state_dir, self.drv_path) if has_log else None)

    async def _substitute(self) -> Substitution:
        """SUBSTITUTED when every missing output was fetched; FAILED when a substituter
        had one but could not deliver it (Nix then builds only with --fallback)."""
        assert self.drv is not None
        if not self.settings.get("substitute") or self.drv.env.get("allowSubstitutes") == "":
            return Substitution.NO_SUBSTITUTERS
        missing = [p for p in self.outputs.values()
                   if p in self.corrupt or not self.store.is_valid(p)]
        outcomes = await self.wait_for(
            self.worker.substitution_goal(p, repair=p in self.corrupt) for p in missing)
        if all(o.ok for o in outcomes):
            return Substitution.SUBSTITUTED
        if Substitution.FAILED in outcomes:
            return Substitution.FAILED
        return Substitution.NO_SUBSTITUTERS

    async def _realise_inputs(self) -> BuildResult | None:
        assert self.drv is not None
        mode = BuildMode.REPAIR if self.mode is BuildMode.REPAIR else BuildMode.NORMAL
        deps = {p: self.worker.derivation_goal(p, mode) for p in self.drv.input_drvs}
        results = await self.wait_for(deps.values())
        if failed := [r.drv_path for r in results if not r.status.ok]:
            return self._result(Status.DEPENDENCY_FAILED,
                                dependencies_failed_message(self.drv_path, len(failed)),
                                failed_dependency=failed[0])
        for result in results:
            wanted = self.drv.input_drvs[result.drv_path]
            self.input_paths.update(result.outputs[name] for name in wanted
                                    if name in result.outputs)
        missing = [src for src in self.drv.input_srcs if not self.store.is_valid(src)]
        if missing and self.settings.get("substitute"):
            await self.wait_for(self.worker.substitution_goal(src) for src in missing)
        for src in self.drv.input_srcs:
            if not self.store.is_valid(src):
                return self._result(
                    Status.SETUP_FAILED,
                    f"cannot build '{self.drv_path}': its input '{src}' is not in the store "
                    "and no substituter has it")
            self.input_paths.add(src)
        return None

    async def _build_locked(self, lock_fds: tuple[int, ...], *, remote: bool) -> BuildResult:
        if self.redirect is None and self._outputs_valid():  # another process built it
            return self._result(Status.ALREADY_VALID)
        if (self.mode is BuildMode.NORMAL and not self.worker.rebuild_failed
                and (cached := self._cached_failure())):
            return cached
        self._delete_leftovers()
        assert self.drv is not None
        build_drv = self.redirect.derivation(self.drv) if self.redirect else self.drv
        closure = self.worker.input_closure(self.input_paths)
        name = self.drv.name
        sink = LogSink(log_path(self.settings.state_dir, self.drv_path),
                       int(self.settings.get("log-lines")), self.worker.background)
        progress = self.worker.progress

        def on_output(data: bytes) -> None:
            progress.build_log(name, sink.write(data))

        build_dir = self.worker.build_dirs.take(name)
        # The builder inherits the output locks: if runner dies, an orphaned builder
        # still holds them, so no second builder starts on the same outputs meanwhile.
        job = BuildJob(self.drv_path, build_drv, closure, self.settings, self.worker.sandbox,
                       on_output, self.worker.spawner, inherit_fds=lock_fds)
        progress.started(self.drv_path, name)
        try:
            if remote:
                assert self.worker.remote is not None
                outcome: BuilderOutcome | RemoteOutcome = await self.worker.remote.run(
                    self.drv_path, build_drv, closure, on_output)
            else:
                outcome = await run_builder(job, build_dir)
        except asyncio.CancelledError:
            sink.discard()
            self.worker.build_dirs.give_back(build_dir)
            self._delete_leftovers()
            raise
        if partial := sink.flush_partial():
            progress.build_log(name, [partial])
        sink.close()
        result = self._finish(build_drv, outcome.ending, outcome.returncode, outcome.message,
                              closure)
        if isinstance(outcome, RemoteOutcome):
            result.remote_unavailable = outcome.unavailable
            if outcome.substituted and result.status is Status.BUILT:
                result.status = Status.SUBSTITUTED  # a remote ActionCache hit
        result.log_path = sink.path
        if not result.status.ok:
            result.log_tail = sink.tail()
            self._after_failure(result, build_dir)
        else:
            self.worker.build_dirs.give_back(build_dir)
        return result

    def _finish(self, build_drv: Derivation, ending: Ending | None, returncode: int,
                message: str, closure: frozenset[str]) -> BuildResult:
        if ending is None:
            return self._result(Status.SETUP_FAILED, message)
        if ending in _ENDINGS:
            return self._result(_ENDINGS[ending], message)
        if returncode != 0:
            return self._result(Status.FAILED, message, exit_status=returncode)
        try:
            infos = collect_outputs(self.drv_path, build_drv, closure,
                                    self.store.compute_closure)
            if self.mode is BuildMode.CHECK and self.redirect is not None:
                keep = bool(self.settings.get("keep-failed"))
                if problems := check_outputs(self.store, infos, self.redirect, keep=keep):
                    return self._result(
                        Status.NOT_DETERMINISTIC,
                        f"derivation '{self.drv_path}' may not be deterministic: "
                        + "; ".join(problems))
            elif self.redirect is not None:
                repair_outputs(self.store, self.drv_path, infos, self.redirect, self.corrupt)
            else:
                self.store.register_valid_paths(infos)
        except OutputRejected as e:
            if e.status is Status.HASH_MISMATCH and self.redirect is None:
                keep_under_real_hash(self.store, self.drv_path, build_drv, closure)
            return self._result(e.status, e.message, exit_status=0)
        except RunnerError as e:
            if e.reason != "cycle":
                raise
            return self._result(Status.FAILED, f"cannot register the outputs of "
                                f"'{self.drv_path}': {e.message}", exit_status=0)
        except OSError as e:  # disk full, permissions: not the derivation's fault
            return self._result(Status.SETUP_FAILED,
                                f"cannot register outputs of '{self.drv_path}': {e}")
        self.store.clear_failures(list(self.outputs.values()))
        return self._result(Status.BUILT)

    def _after_failure(self, result: BuildResult, build_dir: str) -> None:
        assert self.drv is not None
        if self.settings.get("keep-failed"):
            self.worker.progress.message(f"note: keeping build directory '{build_dir}'")
        else:
            self.worker.build_dirs.give_back(build_dir)
            self._delete_leftovers()
        killed = result.exit_status is not None and result.exit_status < 0  # by a signal
        if (result.status in PERMANENT and self.settings.get("cache-failures") and not killed
                and not self.drv.is_fixed_output and self.redirect is None):
            for path in self.outputs.values():
                self.store.register_failure(path, exit_status=result.exit_status,
                                            drv_path=self.drv_path,
                                            log_tail="\n".join(result.log_tail))

    def _delete_leftovers(self) -> None:
        """Remove whatever sits at an output path without being valid (a crashed or
        failed build's remains)."""
        for path in self.outputs.values():
            if os.path.lexists(path) and not self.store.is_valid(path):
                remove_tree(path)
        for path in self.redirect.scratch.values() if self.redirect else ():
            remove_tree(path)  # never valid
