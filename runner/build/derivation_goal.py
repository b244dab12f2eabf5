"""Realising one derivation: valid already? failed before? substitutable? else inputs
first, then a build slot and the output locks, then build, check and register.

Each step is a small method; the first that settles the outcome returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.build import failure_cache, flaky_history, logs
from runner.build.builder import BuilderOutcome, BuildJob, run_builder
from runner.build.fixed_mismatch import keep_under_real_hash
from runner.build.goal import Goal
from runner.build.logs import LogSink, log_path
from runner.build.outputs import OutputRejected, collect_outputs
from runner.build.platform import local_platform_refusal
from runner.build.process import Ending
from runner.build.rebuild import (
    check_outputs,
    corrupt_in_closure,
    is_corrupt,
    producers,
    repair_outputs,
)
from runner.build.redirect import Redirect
from runner.build.remote_builder import RemoteOutcome
from runner.build.result import PERMANENT, BuildResult, Status
from runner.build.retry import RetryPolicy, retryable
from runner.build.substitution_goal import Substitution
from runner.errors import RunnerError
from runner.sandbox import uidpool
from runner.store.canonicalise import remove_tree
from runner.store.derivation import Derivation

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


@dataclass(frozen=True)
class Aside:
    """--check or --repair: valid outputs are rebuilt at scratch paths (`redirect`), then
    compared with them (check) or swapped in for the `corrupt` ones (repair)."""

    check: bool
    redirect: Redirect
    corrupt: frozenset[str] = frozenset()


class DerivationGoal(Goal[BuildResult]):
    def __init__(self, worker: Worker, drv_path: str, drv: Derivation,
                 mode: BuildMode = BuildMode.NORMAL) -> None:
        super().__init__(worker, drv_path)
        self.drv_path = drv_path
        self.drv = drv  # read by the worker's goal table, before the goal exists
        self.mode = mode
        self.store = worker.store
        self.settings = worker.settings
        self.outputs = {name: out.path for name, out in drv.outputs.items()}
        self.input_paths: set[str] = set()
        self.aside: Aside | None = None  # set once, when a --check/--repair build is planned

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
        for path in self.outputs.values():  # before checking validity, so GC keeps them
            self.store.temp_roots.add_temp_root(path)
        if self.mode is BuildMode.CHECK:
            return await self._check()
        corrupt = set()  # --repair: valid outputs whose files are damaged
        if self.mode is BuildMode.REPAIR:
            corrupt = {p for p in self.outputs.values() if is_corrupt(self.store, p)}
        if self._outputs_valid() and not corrupt:
            if self.mode is BuildMode.REPAIR and (failed := await self._repair_closure()):
                return failed
            return self._result(Status.ALREADY_VALID)
        if self.worker.rebuild_failed:
            self.store.clear_failures(list(self.outputs.values()))
        # Substitutes first: a path someone else built supersedes our cached failure.
        substitution = await self._substitute(corrupt)
        if substitution is Substitution.SUBSTITUTED:
            return self._result(Status.SUBSTITUTED)
        if not self.worker.rebuild_failed and (cached := self._cached_failure()):
            return cached
        if not self.worker.rebuild_failed and (cached := await self._substituted_failure()):
            return cached
        if substitution is Substitution.FAILED:
            if not self.settings.flag("fallback"):
                return self._result(
                    Status.SUBSTITUTION_FAILED,
                    f"some substitutes for the outputs of '{self.drv_path}' failed; "
                    "pass --fallback to build it instead")
            self.worker.progress.warn(f"substitution failed, building '{self.drv_path}' "
                                      "instead (--fallback)")
        if corrupt:  # what substitution did not repair is rebuilt aside
            self._set_aside(False, [p for p in self.outputs.values() if self.store.is_valid(p)],
                            {p for p in corrupt if is_corrupt(self.store, p)})
        return await self._build()

    async def _check(self) -> BuildResult:
        """--check: build again next to the valid outputs and compare."""
        if not self._outputs_valid():
            return self._result(
                Status.SETUP_FAILED,
                f"some outputs of '{self.drv_path}' are not valid, so checking is not possible")
        self._set_aside(True, self.outputs.values())
        return await self._build()

    def _set_aside(self, check: bool, paths: Iterable[str], corrupt: Iterable[str] = ()
                   ) -> None:
        redirect = Redirect.for_outputs(self.drv_path, self.drv, paths, self.store.store_dir)
        for path in redirect.scratch.values():
            self.store.temp_roots.add_temp_root(path)
        self.aside = Aside(check, redirect, frozenset(corrupt))

    async def _build(self) -> BuildResult:
        if failed := await self._realise_inputs():
            return failed
        remote = self.worker.remote
        if remote is not None and self.aside is None and not remote.refusal(self.drv):
            async with remote.slots:  # remote builds take no local build slot
                result = await self._locked(remote=True)
            if not result.remote_unavailable or not self.settings.flag("remote-fallback"):
                return result
            self.worker.progress.warn(f"{result.message}; building it locally")
        if refusal := local_platform_refusal(self.drv.system, self.drv_path, self.settings):
            return self._result(Status.SETUP_FAILED, refusal)
        if self.worker.max_jobs == 0:
            raise RunnerError(
                f"unable to build '{self.drv_path}': '--max-jobs' is 0 and no substituter "
                "has its outputs", reason="no-build-slots")
        if refusal := self.worker.sandbox_refusal(dict(self.drv.env)):
            return self._result(Status.SETUP_FAILED, f"cannot build '{self.drv_path}': {refusal}")
        return await self._build_here()

    def _lock_set(self) -> list[str]:
        scratch = self.aside.redirect.scratch.values() if self.aside else ()
        return [*self.outputs.values(), *scratch]

    async def _build_here(self) -> BuildResult:
        """A build slot, then the output locks without waiting. Locks that another
        process holds are waited for without a slot (as Nix does), so this runner builds
        other ready derivations meanwhile instead of idling behind a lock."""
        while True:
            no_build_user = False
            async with self.worker.build_slot():
                locks = self.worker.try_lock_paths(self._lock_set())
                if locks is not None:
                    try:
                        # As root, a build user too; all busy: wait, as for a lock, without
                        # the slot and the locks (as Nix does).
                        ok, user = self.worker.sandbox.reserve_build_user(self.drv.env)
                        if ok:
                            try:
                                return await self._build_locked(locks.fds, remote=False,
                                                                build_user=user)
                            finally:
                                if user is not None:
                                    user.release()
                        no_build_user = True
                    finally:
                        self.worker.unlock(locks)
            if no_build_user:
                await self.worker.sandbox.wait_for_build_user(lambda: self.worker.progress.warn(
                    f"waiting for a free build user to build '{self.drv_path}'"))
                continue
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
        if not self.settings.flag("cache-failures"):
            return None
        record = failure_cache.find_failure(self.store, self.outputs.values())
        if record is None:
            return None
        state = self.settings.state_dir
        has_log = os.path.exists(log_path(state, self.drv_path))
        attempts = failure_cache.attempts_of(state, self.drv_path)
        kept = logs.junit_kept_path(state, self.drv_path, max(
            logs.attempts_logged(state, self.drv_path), 1))
        return self._result(
            Status.CACHED_FAILURE,
            failure_cache.cached_message(self.drv_path, record, attempts),
            log_tail=record.log_tail.splitlines(), exit_status=record.exit_status,
            log_path=log_path(state, self.drv_path) if has_log else None,
            junit_kept=kept if os.path.isdir(kept) else None,
            attempt=attempts[0] if attempts else 1, attempts=attempts[1] if attempts else 1)

    async def _substituted_failure(self) -> BuildResult | None:
        """A trusted cache's record that this derivation fails (use-substituted-failures)."""
        from runner.build import substituted_failure

        return await substituted_failure.check(self)

    async def _substitute(self, corrupt: set[str]) -> Substitution:
        """SUBSTITUTED when every missing (or `corrupt`) output was fetched; FAILED when a
        substituter had one but could not deliver it (Nix then builds only with --fallback)."""
        if not self.settings.flag("substitute") or self.drv.env.get("allowSubstitutes") == "":
            return Substitution.NO_SUBSTITUTERS
        missing = [p for p in self.outputs.values()
                   if p in corrupt or not self.store.is_valid(p)]
        self.worker.progress.substituting_for(missing, self.drv_path)
        outcomes = await self.wait_for(
            self.worker.substitution_goal(p, repair=p in corrupt) for p in missing)
        if all(o.ok for o in outcomes):
            return Substitution.SUBSTITUTED
        if Substitution.FAILED in outcomes:
            return Substitution.FAILED
        return Substitution.NO_SUBSTITUTERS

    async def _repair_closure(self) -> BuildResult | None:
        """--repair of healthy outputs: repair what they refer to, as nix-build --repair
        does; a corrupt path by the derivation that produced it, else from a substituter."""
        corrupt = corrupt_in_closure(self.store, self.outputs.values())
        if not corrupt:
            return None
        made_by = producers(self.store, self.drv_path)
        built = await self.wait_for(self.worker.derivation_goal(drv, BuildMode.REPAIR)
                                    for drv in sorted({made_by[p] for p in corrupt
                                                       if p in made_by}))
        await self.wait_for(self.worker.substitution_goal(p, repair=True)
                            for p in corrupt if p not in made_by)
        still = [p for p in corrupt if is_corrupt(self.store, p)]
        if not still:
            return None
        failed = next((r.drv_path for r in built if not r.status.ok), None)
        return self._result(
            Status.DEPENDENCY_FAILED,
            f"cannot repair '{still[0]}' in the output closure of '{self.drv_path}'",
            failed_dependency=failed)

    async def _realise_inputs(self) -> BuildResult | None:
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
        if missing and self.settings.flag("substitute"):
            await self.wait_for(self.worker.substitution_goal(src) for src in missing)
        if self.mode is BuildMode.REPAIR:  # a source has no deriver: fetch it again
            damaged = [src for src in self.drv.input_srcs if is_corrupt(self.store, src)]
            await self.wait_for(self.worker.substitution_goal(src, repair=True)
                                for src in damaged)
        for src in self.drv.input_srcs:
            if not self.store.is_valid(src):
                return self._result(
                    Status.SETUP_FAILED,
                    f"cannot build '{self.drv_path}': its input '{src}' is not in the store "
                    "and no substituter has it")
            self.input_paths.add(src)
        return None

    async def _build_locked(self, lock_fds: tuple[int, ...], *, remote: bool,
                            build_user: uidpool.Lease | None = None) -> BuildResult:
        if self.aside is None and self._outputs_valid():  # another process built it
            return self._result(Status.ALREADY_VALID)
        if (self.mode is BuildMode.NORMAL and not self.worker.rebuild_failed
                and (cached := self._cached_failure())):
            return cached
        policy = self._retry_policy()
        logs.drop_attempts(self.settings.state_dir, self.drv_path)  # an earlier build's
        attempt = 1
        while True:  # a failed attempt is retried in a fresh build dir (runner/build/retry.py)
            result, build_dir, killed = await self._attempt(lock_fds, remote, attempt,
                                                            policy.attempts, build_user)
            result.attempt, result.attempts = attempt, policy.attempts
            if result.status.ok:
                self.worker.build_dirs.give_back(build_dir)
                if attempt > 1:
                    self._flaky_pass(policy, result)
                return result
            self._keep_junit(policy, result, attempt)
            if not retryable(result):
                result.attempts = attempt  # it would fail the same way again
            elif attempt < policy.attempts:
                self._before_retry(result, build_dir, attempt, policy.attempts)
                attempt += 1
                continue
            if result.attempts > 1:
                result.message += f"; {result.detail}"
            self._after_failure(result, build_dir, runner_killed=killed, flaky=policy.flaky)
            return result

    def _retry_policy(self) -> RetryPolicy:
        if self.aside is not None:  # --check and --repair compare one build
            return RetryPolicy()
        return self.worker.retry_policies.get(self.drv.name)

    async def _attempt(self, lock_fds: tuple[int, ...], remote: bool, attempt: int,
                       attempts: int, build_user: uidpool.Lease | None = None,
                       ) -> tuple[BuildResult, str, bool]:
        """One run of the builder: its result, its build dir (still there when it failed)
        and whether runner killed it."""
        self._delete_leftovers()
        build_drv = self.aside.redirect.derivation(self.drv) if self.aside else self.drv
        closure = self.worker.input_closure(self.input_paths)
        name = self.drv.name
        # An attempt that may be retried writes its log at once: it moves aside if so.
        sink = LogSink(log_path(self.settings.state_dir, self.drv_path),
                       self.settings.number("log-lines"),
                       self.worker.background if attempt == attempts else None)
        progress = self.worker.progress

        def on_output(data: bytes) -> None:
            progress.build_log(name, sink.write(data))

        build_dir = self.worker.build_dirs.take(name)
        # The builder inherits the output locks: if runner dies, an orphaned builder
        # still holds them, so no second builder starts on the same outputs meanwhile.
        job = BuildJob(self.drv_path, build_drv, closure, self.settings, self.worker.sandbox,
                       on_output, self.worker.spawner, inherit_fds=lock_fds,
                       build_user=build_user)
        progress.started(self.drv_path, name, attempt, attempts)
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
        try:
            result = self._finish(build_drv, outcome, closure)
        except BaseException:  # a store error ends the run: still leave no build dir
            self.worker.build_dirs.give_back(build_dir)
            self._delete_leftovers()
            raise
        result.log_path = sink.path
        if not result.status.ok:
            result.log_tail = sink.tail()
        killed = isinstance(outcome, BuilderOutcome) and outcome.log_closed
        return result, build_dir, killed

    def _keep_junit(self, policy: RetryPolicy, result: BuildResult, attempt: int) -> None:
        """The failed attempt's JUnit XML, before its leftovers go: the failing cases are
        what `runner log`, the status line and the report show later."""
        output = self.outputs.get(policy.junit or "")
        if output is None or self.aside is not None or not os.path.exists(output):
            return
        from runner.report import junit  # defusedxml: only for test derivations

        kept = logs.junit_kept_path(self.settings.state_dir, self.drv_path, attempt)
        with contextlib.suppress(OSError):
            if junit.keep(output, kept):
                result.junit_kept = kept

    def _before_retry(self, result: BuildResult, build_dir: str, attempt: int,
                      attempts: int) -> None:
        state = self.settings.state_dir
        with contextlib.suppress(FileNotFoundError):
            os.replace(log_path(state, self.drv_path),
                       logs.attempt_log_path(state, self.drv_path, attempt))
        why = (f"exit code {result.exit_status}" if result.status is Status.FAILED
               else result.status.value)
        self.worker.progress.warn(
            f"attempt {attempt}/{attempts} of '{self.drv_path}' failed ({why}); retrying in "
            f"a fresh build directory (its log: runner log … --attempt {attempt})")
        if self.settings.flag("keep-failed"):
            self.worker.build_dirs.keep(build_dir)
            self.worker.progress.message(f"note: keeping build directory '{build_dir}'")
        else:
            self.worker.build_dirs.give_back(build_dir)
        self._delete_leftovers()

    def _flaky_pass(self, policy: RetryPolicy, result: BuildResult) -> None:
        with contextlib.suppress(RunnerError):  # a note for `runner store flaky list`
            flaky_history.record_flaky(self.settings.state_dir, policy.spec or "",
                                       policy.key or self.drv.name, self.drv_path,
                                       result.attempt, result.attempts)

    def _finish(self, build_drv: Derivation, outcome: BuilderOutcome | RemoteOutcome,
                closure: frozenset[str]) -> BuildResult:
        ending, returncode, message = outcome.ending, outcome.returncode, outcome.message
        remote = outcome if isinstance(outcome, RemoteOutcome) else None
        if ending is None:
            return self._result(Status.SETUP_FAILED, message,
                                remote_unavailable=remote is not None and remote.unavailable)
        if ending in _ENDINGS:
            return self._result(_ENDINGS[ending], message)
        if returncode != 0:
            return self._result(Status.FAILED, message, exit_status=returncode)
        try:
            infos = collect_outputs(self.drv_path, build_drv, closure,
                                    self.store.compute_closure)
            if self.aside is not None and self.aside.check:
                keep = self.settings.flag("keep-failed")
                if problems := check_outputs(self.store, infos, self.aside.redirect, keep=keep):
                    return self._result(
                        Status.NOT_DETERMINISTIC,
                        f"derivation '{self.drv_path}' may not be deterministic: "
                        + "; ".join(problems))
            elif self.aside is not None:
                repair_outputs(self.store, self.drv_path, infos, self.aside.redirect,
                               set(self.aside.corrupt))
            else:
                self.store.register_valid_paths(infos)
        except OutputRejected as e:
            if e.status is Status.HASH_MISMATCH and self.aside is None:
                with contextlib.suppress(OSError, RunnerError):  # best effort, as in Nix
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
        # A remote ActionCache hit: the outputs were not built now but fetched.
        return self._result(Status.SUBSTITUTED if remote is not None and remote.substituted
                            else Status.BUILT)

    def _after_failure(self, result: BuildResult, build_dir: str, *,
                       runner_killed: bool = False, flaky: bool = False) -> None:
        transient = None
        if result.status in PERMANENT:  # before the leftovers go: they may fill the disk
            transient = failure_cache.machine_cause(
                result.exit_status, {"store": self.store.store_dir, "build directory": build_dir},
                runner_killed=runner_killed)
            if transient:
                result.message += f"; {transient}: not cached"
        if self.settings.flag("keep-failed"):
            self.worker.build_dirs.keep(build_dir)  # docs/security.md, class 4
            self.worker.progress.message(f"note: keeping build directory '{build_dir}'")
        else:
            self.worker.build_dirs.give_back(build_dir)
            self._delete_leftovers()
        killed = result.exit_status is not None and result.exit_status < 0  # by a signal
        cache = (result.status in PERMANENT and self.settings.flag("cache-failures")
                 and not killed and not transient and not self.drv.is_fixed_output
                 and self.aside is None)
        if cache and flaky:
            result.message += "; flaky: not cached"
        elif cache:
            for path in self.outputs.values():
                self.store.register_failure(path, exit_status=result.exit_status,
                                            drv_path=self.drv_path,
                                            log_tail="\n".join(result.log_tail))
            with contextlib.suppress(RunnerError):  # `failed 3/3 attempts` when cached
                flaky_history.record_failed_attempts(self.settings.state_dir, self.drv_path,
                                                     result.attempt, result.attempts)

    def _delete_leftovers(self) -> None:
        """Remove whatever sits at an output path without being valid (a crashed or
        failed build's remains)."""
        for path in self.outputs.values():
            if os.path.lexists(path) and not self.store.is_valid(path):
                remove_tree(path)
        for path in self.aside.redirect.scratch.values() if self.aside else ():
            remove_tree(path)  # never valid
