"""A derivation that a trusted cache says fails: a cached failure without building
(setting `use-substituted-failures`, off by default; docs/caching.md).

Asked after substitution and the local failure cache, before building; the
fetched log is kept where the derivation's own log would be, so `runner log`
prints it.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import os
import time
from typing import TYPE_CHECKING

from runner.build.logs import log_path
from runner.build.result import BuildResult, Status
from runner.substituters.failure_lookup import FoundFailure, find_failure
from runner.substituters.log_fetch import Caches

if TYPE_CHECKING:
    from runner.build.derivation_goal import DerivationGoal


async def check(goal: DerivationGoal) -> BuildResult | None:
    """The cached failure a cache vouches for, or None (build it)."""
    settings = goal.settings
    if not settings.get("use-substituted-failures") or not settings.get("substitute"):
        return None
    if goal.drv.is_fixed_output:  # their failures are never cached (a download may work)
        return None
    worker = goal.worker
    if not worker.substituters:
        return None
    loop = asyncio.get_running_loop()

    def warn(message: str) -> None:
        loop.call_soon_threadsafe(worker.progress.warn, message)

    def lookup() -> FoundFailure | None:
        caches = Caches(worker.substituters, warn,
                        fail_on_errors=settings.get("substituter-errors") == "fail")
        return find_failure(caches, goal.drv_path, goal.store.store_dir)

    async with worker.substitution_slot():
        found = await asyncio.to_thread(lookup)
    if found is None:
        return None
    path = log_path(settings.state_dir, goal.drv_path)
    saved = await asyncio.to_thread(_save_log, path, found.log)
    lines = found.log.decode("utf-8", "replace").splitlines()
    return BuildResult(goal.drv_path, Status.CACHED_FAILURE, message=describe(found),
                       log_tail=lines[-max(int(settings.get("log-lines")), 1):],
                       exit_status=found.record.exit_status,
                       log_path=path if saved else None)


def describe(found: FoundFailure) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.record.time))
    return (f"builder for '{found.record.drv_path}' failed on {found.record.system} at "
            f"{when} (record from {found.cache}, signed by {found.key})")


def _save_log(path: str, data: bytes) -> bool:
    """Store the fetched log as the derivation's own (bz2, atomically); False if we
    cannot (the failure stands, `runner log` then asks the caches)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(bz2.compress(data, 9))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True
