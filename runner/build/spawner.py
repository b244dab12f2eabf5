"""Starting builder processes off the event loop, on long-lived threads.

`subprocess.Popen` returns only once the child has exec'd. For a sandboxed
build that is the whole sandbox set-up (namespaces, mounts, pivot_root:
several milliseconds), so spawning on the loop thread would serialise every
sandboxed build. The worker owns one `Spawner` for the whole run: a small
pool of threads that start builders while the loop goes on.

The threads must outlive every build they start: the sandbox supervisor has a
parent-death signal, which the kernel sends when the *thread* that is its
parent exits (docs/sandbox.md, "Lifetime"). Each thread starts its own sandbox
fork server at its first sandboxed spawn; the supervisors it clones are that
thread's children, and the server ends with the thread. `ThreadPoolExecutor`
threads never exit before `shutdown`, and the worker calls `close` only after
every build ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_THREADS = 8


class Spawner:
    def __init__(self, max_jobs: int) -> None:
        self._threads = max(1, min(max_jobs, MAX_THREADS))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, start: Callable[[], T], undo: Callable[[T], None]) -> T:
        """`start()` on a spawner thread. If the caller is cancelled meanwhile, the
        start is still waited for and its result handed to `undo` (kill and reap),
        so no process is left behind; then CancelledError propagates."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="runner-spawn")
        future = asyncio.get_running_loop().run_in_executor(self._pool, start)
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.done():
                    cancelled = True  # wait for the thread, whatever it does
                    continue
                if not future.cancelled() and future.exception() is None:
                    undo(future.result())  # it started just now: stop it
                raise
            except BaseException:
                if cancelled:
                    raise asyncio.CancelledError() from None
                raise
            if cancelled:
                undo(result)
                raise asyncio.CancelledError()
            return result

    def close(self) -> None:
        """Join the threads; call once no build started here is running."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
