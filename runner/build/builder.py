"""Runs one derivation's builder: build dir, environment, spawn (sandboxed or not), limits.

Scheduling lives in the goals; this module only executes. The sandbox plugs
in at `_spawn`: with a sandbox the builder sees its build dir as `/build`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass

from runner.build.environment import build_env, write_attr_files
from runner.build.process import Child, Ending, Limits, Shape, kill_group, supervise
from runner.build.sandboxing import SandboxMode
from runner.build.spawner import Spawner
from runner.errors import RunnerError
from runner.sandbox import uidpool
from runner.sandbox.served import ServedProcess
from runner.settings import Settings
from runner.store.derivation import Derivation

SANDBOX_BUILD_TOP = "/build"


@dataclass(frozen=True)
class BuildJob:
    drv_path: str
    drv: Derivation
    closure: Collection[str]  # input closure, for the sandbox's mounts
    settings: Settings
    sandbox: SandboxMode
    on_output: Callable[[bytes], None]
    spawner: Spawner  # the worker's long-lived spawn threads
    inherit_fds: tuple[int, ...] = ()  # output locks: held until every builder process ends
    build_user: uidpool.Lease | None = None  # reserved by the goal (sandboxing.py)


@dataclass(frozen=True)
class BuilderOutcome:
    ending: Ending | None  # None: the builder could not be started
    returncode: int
    message: str
    build_dir: str
    log_closed: bool = False  # runner killed it: it closed its log and kept running


async def run_builder(job: BuildJob, build_dir: str) -> BuilderOutcome:
    """Run the builder in `build_dir` to its end; never raises for builder problems."""
    settings = job.settings
    env = job.drv.env
    limits = Limits(
        timeout=_tighter(settings.number("timeout"), env.get("timeout")),
        max_silent_time=_tighter(settings.number("max-silent-time"), env.get("maxSilent")),
        max_log_size=settings.number("max-log-size"),
    )
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            write_attr_files(job.drv, build_dir)
            sandboxed = job.sandbox.enabled_for(job.drv.env)
            if sandboxed:
                # The sandbox set-up runs before Popen returns: off the loop thread,
                # so sandboxed builds start in parallel.
                proc, release = await job.spawner.run(
                    lambda: _spawn_sandboxed(job, build_dir, write_fd), _stop)
            else:
                proc, release = _spawn_plain(job, build_dir, write_fd)
        finally:
            os.close(write_fd)
    except OSError as e:
        os.close(read_fd)
        what = e.strerror or str(e)
        return BuilderOutcome(None, -1, f"executing '{job.drv.builder}': {what}", build_dir)
    except RunnerError as e:  # sandbox set-up: not the derivation's fault, not cached
        os.close(read_fd)
        return BuilderOutcome(None, -1, f"building '{job.drv_path}': {e.message}", build_dir)
    except BaseException:
        os.close(read_fd)
        raise
    try:
        end = await supervise(proc, read_fd, limits, job.on_output, shape=_shape(proc, sandboxed))
    finally:
        release()
    if isinstance(proc, ServedProcess) and proc.exit_problem:  # as a supervisor says it
        job.on_output(f"sandbox: cannot collect the outputs: {proc.exit_problem}\n".encode())
    message = _describe(job, end.ending, end.returncode, limits)
    if end.log_closed:
        message += " (it closed its stdout and stderr and kept running)"
    return BuilderOutcome(end.ending, end.returncode, message, build_dir, end.log_closed)


def _shape(proc: Child, sandboxed: bool) -> Shape:
    if isinstance(proc, ServedProcess) and proc.on_exit is not None:
        return Shape.COLLECTING
    return Shape.SUPERVISOR if sandboxed else Shape.PLAIN


def _tighter(setting: int, attr: str | None) -> int:
    """A derivation's own `timeout`/`maxSilent` can only tighten the setting (0 = none)."""
    try:
        own = int(attr) if attr else 0
    except ValueError:
        own = 0
    limits = [n for n in (setting, own) if n > 0]
    return min(limits) if limits else 0


Started = tuple[Child, Callable[[], None]]  # the process; call once reaped


def _spawn_sandboxed(job: BuildJob, build_dir: str, write_fd: int) -> Started:
    """Runs on a spawner thread (which outlives the build: docs/sandbox.md)."""
    argv = [job.drv.builder, *job.drv.args]
    env = build_env(job.drv, SANDBOX_BUILD_TOP, job.settings)
    built = job.sandbox.spawn(
        argv=argv, env=env, build_dir=build_dir, closure=job.closure,
        outputs=[o.path for o in job.drv.outputs.values()],
        fixed_output=job.drv.is_fixed_output, stdout=write_fd, stderr=write_fd,
        lease=job.build_user,
    )
    return built.proc, built.release


def _spawn_plain(job: BuildJob, build_dir: str, write_fd: int) -> Started:
    argv = [job.drv.builder, *job.drv.args]
    env = build_env(job.drv, build_dir, job.settings)
    return subprocess.Popen(
        argv, cwd=build_dir, env=env, stdin=subprocess.DEVNULL, stdout=write_fd,
        stderr=write_fd, start_new_session=True, close_fds=True, pass_fds=job.inherit_fds,
    ), _nothing


def _stop(started: Started) -> None:
    """A build cancelled while its sandbox was being set up: end it at once."""
    proc, release = started
    kill_group(proc.pid)
    proc.wait()
    release()


def _nothing() -> None:
    pass


def _describe(job: BuildJob, ending: Ending, returncode: int, limits: Limits) -> str:
    who = f"builder for '{job.drv_path}'"
    if ending is Ending.TIMED_OUT:
        return f"{who} timed out after {limits.timeout:g} seconds"
    if ending is Ending.SILENT:
        return (f"{who} timed out after {limits.max_silent_time:g} seconds of silence")
    if ending is Ending.LOG_LIMIT:
        return f"{who} killed after writing more than {limits.max_log_size} bytes of log"
    if returncode < 0:
        return f"{who} failed due to signal {-returncode}"
    return f"{who} failed with exit code {returncode}"
