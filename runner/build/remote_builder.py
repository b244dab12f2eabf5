"""Runs one derivation on a REAPI endpoint instead of a local builder.

The goal keeps everything else: locks, leftovers, checking and registering
the outputs (our store stays the source of truth). The blocking gRPC calls
run in a thread so the loop goes on; a hit in the remote ActionCache is
reported as a substitution.

An endpoint found unavailable is down for the rest of the run: the first
failure closes the channel (every call in flight ends at once) and every
later action is refused without another deadline, so with `remote-fallback`
they all build locally at once.

gRPC starts threads and fork handlers that break a process forked from
runner afterwards (the sandbox probe forks runner): `before_open` runs
before the channel exists, and the worker has the sandbox probed there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.build.process import Ending
from runner.build.result import Status
from runner.errors import RunnerError
from runner.reasons import Reason
from runner.settings import Settings
from runner.store.derivation import Derivation

if TYPE_CHECKING:
    from runner.remote.executor import RemoteExecutor, RemoteResult

UNAVAILABLE = (Reason.REMOTE_UNAVAILABLE, Reason.REMOTE_ERROR)


@dataclass(frozen=True)
class RemoteOutcome:
    ending: Ending | None  # None: the remote could not run it (not the derivation's fault)
    returncode: int
    message: str
    substituted: bool = False  # served from the remote ActionCache
    unavailable: bool = False  # the endpoint is down or broken: a local build may stand in


class RemoteBuilders:
    """The worker's one connection to `remote-builders`, opened on first use."""

    def __init__(self, settings: Settings, before_open: Callable[[], None] = lambda: None
                 ) -> None:
        self.url = settings.text("remote-builders")
        self.settings = settings
        self.slots = asyncio.Semaphore(max(settings.number("remote-max-jobs"), 1))
        self._before_open: Callable[[], None] | None = before_open
        self._executor: RemoteExecutor | None = None
        self._mutex = threading.Lock()
        self.down: str | None = None  # why the endpoint is unavailable for this run

    def prepare(self) -> None:
        """Call on the loop thread before the first `run`: what must happen before
        gRPC exists in this process."""
        if self._before_open is not None:
            before, self._before_open = self._before_open, None
            before()

    @property
    def started(self) -> bool:
        """gRPC may run in this process (`prepare` was called)."""
        return self._before_open is None

    def _open(self) -> RemoteExecutor:
        from runner.remote.executor import RemoteExecutor, RemoteOptions  # grpc: only if used

        with self._mutex:
            if self.down is not None:
                raise RunnerError(self.down, reason="remote-unavailable")
            if self._executor is None:
                assert self._before_open is None, "RemoteBuilders.prepare() was not called"
                options = RemoteOptions(
                    instance=self.settings.text("remote-instance"),
                    connect_timeout=float(self.settings.number("remote-connect-timeout")),
                    rpc_timeout=float(self.settings.number("remote-timeout")))
                self._executor = RemoteExecutor(self.url, self.settings, options)
            return self._executor

    def close(self) -> None:
        with self._mutex:
            if self._executor is not None:
                self._executor.close()
                self._executor = None

    def refusal(self, drv: Derivation) -> str | None:
        from runner.remote.action import remote_refusal

        return remote_refusal(drv)

    def _mark_down(self) -> None:
        """The first unavailability: remember it and end every call in flight."""
        with self._mutex:
            if self.down is not None:
                return
            self.down = f"remote executor '{self.url}' is down for this run"
            if self._executor is not None:
                self._executor.close()  # in-flight calls end now (CANCELLED)
                self._executor = None

    async def run(self, drv_path: str, drv: Derivation, closure: Collection[str],
                  on_output: Callable[[bytes], None]) -> RemoteOutcome:
        if self.down is not None:
            return RemoteOutcome(None, -1, f"not building '{drv_path}' remotely: {self.down}",
                                 unavailable=True)
        self.prepare()
        try:
            result = await asyncio.to_thread(self._execute, drv_path, drv, closure)
        except Exception as e:
            # Another action found the endpoint down and closed the channel under this
            # call (gRPC raises CANCELLED, or ValueError for a call on a closed channel).
            if self.down is not None:
                return RemoteOutcome(None, -1, f"not building '{drv_path}' remotely: "
                                     f"{self.down}", unavailable=True)
            if not isinstance(e, RunnerError):
                raise
            if e.reason == Reason.REMOTE_UNAVAILABLE:
                self._mark_down()
            return RemoteOutcome(None, -1, f"remote build of '{drv_path}' on '{self.url}' "
                                 f"failed: {e.message}", unavailable=e.reason in UNAVAILABLE)
        if result.log:
            on_output(result.log)
        if result.status is Status.TIMED_OUT:
            return RemoteOutcome(Ending.TIMED_OUT, -1, result.message)
        if result.status is Status.FAILED:
            return RemoteOutcome(Ending.EXITED, result.exit_code or 1, result.message)
        return RemoteOutcome(Ending.EXITED, 0, "",
                             substituted=result.status is Status.SUBSTITUTED)

    def _execute(self, drv_path: str, drv: Derivation, closure: Collection[str]
                 ) -> RemoteResult:
        return self._open().execute(drv_path, drv, closure)
