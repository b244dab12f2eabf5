"""Can this process build in a sandbox? Asked once, by building `/bin/true` in one."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile

from runner.errors import RunnerError
from runner.sandbox import native, slots, uidpool
from runner.sandbox.executor import spawn
from runner.sandbox.plan import default_ids, make_plan
from runner.settings import DEFAULT_SANDBOX_PATHS
from runner.store import trash


class _Defaults:
    """The plan only reads these two settings; the probe ignores the user's config."""

    def strings(self, name: str) -> list[str]:
        return {"sandbox-paths": list(DEFAULT_SANDBOX_PATHS),
                "allowed-spec-sandbox-paths": []}[name]

    def text(self, name: str) -> str:
        raise KeyError(name)

    def flag(self, name: str) -> bool:
        raise KeyError(name)


@functools.cache
def probe() -> str | None:
    """None when sandboxed builds work here, else the reason they do not (cached)."""
    if sys.platform != "linux":
        return f"namespaces are Linux-only (this is {sys.platform})"
    try:
        lease = uidpool.acquire() if os.geteuid() == 0 else None
    except RunnerError as e:
        return e.message
    try:
        return _try_build(lease.uid if lease else None)
    finally:
        if lease is not None:
            lease.release()


def _try_build(build_uid: int | None) -> str | None:
    with tempfile.TemporaryDirectory(prefix="runner-sandbox-probe-") as tmp:
        store, build = os.path.join(tmp, "store"), os.path.join(tmp, "build")
        os.mkdir(store)
        os.mkdir(build)
        plan = make_plan(argv=["/bin/true"], env={}, build_dir=build, store_dir=store,
                         closure=[], outputs=[], fixed_output=False, settings=_Defaults(),
                         ids=default_ids(build_uid) if build_uid is not None else default_ids())
        try:
            # The way builds will start: the C spawn where it is built; otherwise Popen
            # forks runner here (no fork server for one build on this thread).
            proc = spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         fork_server=None if native.module() is not None else False)
        except RunnerError as e:
            return e.message
        except OSError as e:
            return f"cannot run /bin/true in the sandbox: {e}"
        _, err = proc.communicate()
        slots.release(store)  # its kept staging dir, before the probe's dir goes
        trash.drain()
        if proc.returncode != 0:
            detail = (err or b"").decode(errors="replace").strip()
            return f"a test build in the sandbox exited with {proc.returncode}: {detail}"
    return None
