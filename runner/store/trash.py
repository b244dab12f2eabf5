"""Trees deleted later, off the caller's path: renamed aside now, removed by one thread.

Removing a tree on ext4 costs ~0.3 ms per entry (each `rmdir`/`unlink` is a
journaled directory change); a sandboxed build's staging dir is 4 or 5 of them,
on the critical path of every build in a chain (docs/sandbox.md, "Cost"). A
rename costs ~0.05 ms. `discard` renames the tree to a temp dir name of the
store's layout (`.tmp-<pid>-trash-<n>`, the adders' temp dirs) and hands it
to a daemon thread that removes it. `drain` waits until all are gone: the
worker calls it before a run ends, and it runs at exit. A runner killed
before that leaves `.tmp-<pid>-…` entries whose pid is dead, which gc
removes as abandoned temp dirs (`staging.TempDir.is_abandoned`, which also
needs the dir's flock free: nothing holds one on these).
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import threading
from collections.abc import Callable

from runner.store.canonicalise import remove_tree
from runner.store.layout import TEMP_DIR_PREFIX

_queue: queue.Queue[Callable[[], object]] = queue.Queue()
_names = itertools.count()
_started = threading.Lock()
_thread: list[threading.Thread] = []


def discard(path: str) -> None:
    """Remove the tree `path` soon; its name is free when this returns. A path that
    cannot be renamed aside (e.g. a mount point) is removed here and now."""
    aside = os.path.join(os.path.dirname(path),
                         f"{TEMP_DIR_PREFIX}{os.getpid()}-trash-{next(_names)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        remove_tree(path)
        return
    later(lambda: remove_tree(aside))


def later(job: Callable[[], object]) -> None:
    """Run `job` on the thread, after what is queued; an error it raises is dropped
    (what it leaves is an abandoned temp dir once runner exits: gc removes it)."""
    _start()
    _queue.put(job)


def drain() -> None:
    """Return once every tree discarded (and job queued) so far is done."""
    if _thread:
        _queue.join()


def _start() -> None:
    with _started:
        if _thread and _thread[0].is_alive():
            return
        thread = threading.Thread(target=_remove_forever, name="runner-trash", daemon=True)
        _thread[:] = [thread]
        thread.start()


def _remove_forever() -> None:
    while True:
        job = _queue.get()
        try:
            job()
        except Exception:  # the thread must outlive any one job
            pass  # what stays is an abandoned temp dir once runner exits: gc removes it
        finally:
            _queue.task_done()


atexit.register(drain)
