"""Whether each build is sandboxed, and starting it in the sandbox (docs/sandbox.md).

The choice is per derivation (`runner.sandbox.use_sandbox`): `relaxed` lets a
derivation with `__noChroot` build outside, and a machine without namespaces
falls back to unsandboxed builds (one warning) only when `sandbox-fallback`
allows it. Its errors reach the builder as set-up failures, which are not cached.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from runner.build.path_visibility import PathVisibility, visible_paths
from runner.errors import RunnerError
from runner.sandbox import staging, uidpool
from runner.sandbox.executor import spawn
from runner.sandbox.plan import default_ids, make_plan
from runner.sandbox.policy import use_sandbox
from runner.sandbox.served import ServedProcess
from runner.settings import Settings

# Waiting for a build user: how often to look, and after how long to say so (once).
BUILD_USER_POLL = 0.05
BUILD_USER_NOTICE = 1.0


@dataclass(frozen=True)
class SandboxedBuild:
    proc: ServedProcess | subprocess.Popen[bytes]
    release: Callable[[], None]  # call once `proc` is reaped, however it ended


@dataclass(frozen=True)
class SandboxMode:
    """The run's sandbox policy: the settings, and where the fallback warning goes."""

    settings: Settings
    warn: Callable[[str], None]
    # Tools on PATH the sandbox hides: said once per run (docs/sandbox.md).
    visibility: PathVisibility | None = field(default=None, compare=False)

    def enabled_for(self, drv_env: Mapping[str, str]) -> bool:
        """Raises RunnerError when this derivation may not build under the settings."""
        return use_sandbox(drv_env, self.settings, self.warn)

    def reserve_build_user(self, drv_env: Mapping[str, str]) -> tuple[bool, uidpool.Lease | None]:
        """Before a local build: (True, its build user or None when it needs none), or
        (False, None) when it needs one and all are busy; then the caller waits with
        `wait_for_build_user` and asks again. Set-up errors are left to the builder."""
        if os.geteuid() != 0:
            return True, None
        try:
            if not self.enabled_for(drv_env):
                return True, None
            lease = uidpool.try_acquire(self.settings.text("build-users-group"))
        except RunnerError:
            return True, None  # spawn meets it again and the build reports it
        return lease is not None, lease

    async def wait_for_build_user(self, notice: Callable[[], None]) -> None:
        """Until some build user is free; `notice()` once if that takes long."""
        group = self.settings.text("build-users-group")
        started = time.monotonic()
        noticed = False
        while not uidpool.any_free(group):
            if not noticed and time.monotonic() - started >= BUILD_USER_NOTICE:
                notice()
                noticed = True
            await asyncio.sleep(BUILD_USER_POLL)  # as Nix, which polls too

    def spawn(
        self, *, argv: list[str], env: dict[str, str], build_dir: str,
        closure: Collection[str], outputs: list[str], fixed_output: bool, stdout: int, stderr: int,
        lease: uidpool.Lease | None = None,
    ) -> SandboxedBuild:
        # As root, a build uid of its own for this build (docs/security.md, class 2);
        # `lease`: the one the build goal reserved, which the goal releases (after every
        # attempt of the build); one taken here is released here, once reaped.
        owned = lease is None and os.geteuid() == 0
        if owned:
            lease = uidpool.acquire(self.settings.text("build-users-group"))
        try:
            plan = make_plan(
                argv=argv, env=env, build_dir=build_dir, store_dir=self.settings.store_dir,
                closure=closure, outputs=outputs, fixed_output=fixed_output,
                settings=self.settings,
                ids=default_ids(lease.uid, lease.gid) if lease else default_ids(),
            )
            if self.visibility is not None:
                self.visibility.check(outputs[0] if outputs else build_dir, env,
                                      visible_paths(plan))
            proc = spawn(plan, stdout=stdout, stderr=stderr)
        except BaseException:
            if owned and lease is not None:
                lease.release()
            raise

        def release() -> None:
            # A supervisor killed by a timeout or an interrupt leaves its staging dir.
            staging.discard(plan)
            if owned and lease is not None:
                lease.release()  # the build's processes are gone: the uid is free
        return SandboxedBuild(proc, release)


def choose_sandbox(settings: Settings, warn: Callable[[str], None]) -> SandboxMode:
    """Cheap: nothing is probed until the first build asks."""
    return SandboxMode(settings, warn, PathVisibility(warn, settings.store_dir))
