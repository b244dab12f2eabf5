"""The failure cache as the build sees it: look up, record, and describe a cached failure."""

from __future__ import annotations

import time
from collections.abc import Iterable

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


def cached_message(drv_path: str, record: FailureRecord) -> str:
    age = describe_age(time.time() - record.time)
    return f"builder for '{drv_path}' failed previously (cached {age})"
