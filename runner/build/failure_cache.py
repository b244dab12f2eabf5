"""The failure cache as the build sees it: look up, record, and describe a cached failure."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping

from runner.build import flaky_history
from runner.errors import RunnerError
from runner.store.local_store import LocalStore
from runner.store.path_info import FailureRecord


def find_failure(store: LocalStore, paths: Iterable[str]) -> FailureRecord | None:
    for path in paths:
        record: FailureRecord | None = store.query_failure(path)
        if record is not None:
            return record
    return None


def describe_age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def cached_message(drv_path: str, record: FailureRecord,
                   attempts: tuple[int, int] | None = None) -> str:
    age = describe_age(time.time() - record.time)
    tried = f"; failed {attempts[0]}/{attempts[1]} attempts" if attempts else ""
    return f"builder for '{drv_path}' failed previously (cached {age}{tried})"


def attempts_of(state_dir: str, drv_path: str) -> tuple[int, int] | None:
    """(failed, allowed) when the cached failure of `drv_path` came after retries."""
    try:
        found = flaky_history.failed_attempts(state_dir, drv_path)
    except RunnerError:
        return None  # an unreadable note: the failure itself still stands
    return found if found is not None and found[1] > 1 else None


# A file system with less than this left is full as far as a build is concerned.
FULL_BYTES = 1 << 20
FULL_INODES = 64


def machine_cause(exit_status: int | None, file_systems: Mapping[str, str],
                  *, runner_killed: bool = False) -> str | None:
    """Why a failed build may be the machine's fault rather than the derivation's, or None.
    Such a failure is not cached: the same inputs may well build next time.

    `file_systems`: what each checked directory is ("store" -> its path). Call before the
    failed build's leftovers are removed: what it wrote is what filled the disk."""
    if exit_status is not None and exit_status < 0 and not runner_killed:
        name = signal.Signals(-exit_status).name if -exit_status in _SIGNALS else "a signal"
        who = " (the OOM killer, an administrator)" if -exit_status == signal.SIGKILL else ""
        return f"killed by {name}, which runner did not send{who}"
    for what, path in file_systems.items():
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        if free < FULL_BYTES:
            return f"the {what}'s file system is full ({_size(free)} free)"
        if st.f_files and st.f_favail < FULL_INODES:  # f_files 0: no inode limit (btrfs)
            return f"the {what}'s file system is out of inodes ({st.f_favail} free)"
    return None


_SIGNALS = {int(s) for s in signal.Signals}


def _size(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} bytes"
