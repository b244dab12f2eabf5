"""One helper thread for file work nobody waits for: writing finished logs, removing
used build dirs.

Creating and deleting inodes costs up to a millisecond each on some disks;
done on the event loop, that is most of a trivial build's cost. The thread
runs the jobs in order and is joined before the worker returns, so every log
exists and every build dir is gone when `runner build` exits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from runner.errors import os_error_text

Job = tuple[Callable[..., object], tuple[Any, ...]]


class Background:
    def __init__(self, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="runner-background",
                                            daemon=True)
            self._thread.start()
        self._jobs.put((fn, args))

    def close(self) -> None:
        """Finish every submitted job."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except OSError as e:  # a log or a temp dir: worth a warning, not a failure
                self._warn(os_error_text(_what(fn, args), e))


def _what(fn: Callable[..., object], args: tuple[Any, ...]) -> str:
    """`cannot write file '/…/x.drv'` for `_write_file('/…/x.drv', …)`: the job's
    name and the path it works on."""
    action = fn.__name__.strip("_").replace("_", " ")
    target = f" '{args[0]}'" if args and isinstance(args[0], str) else ""
    return f"cannot {action}{target}"
