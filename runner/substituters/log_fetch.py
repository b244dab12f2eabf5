"""Reading logs and other small files from the substituters' binary caches.

The caches are asked by priority, as for substitution; one that is down (in
this run, or known down from an earlier one) is skipped, reported once, and
fails the run under `substituter-errors = fail`. Every read is bounded: a
file larger than its limit is refused after reading at most one byte more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runner.errors import RunnerError
from runner.substituters.base import Substituter, Warn
from runner.substituters.binary_cache import BinaryCache
from runner.substituters.failure_record import log_name
from runner.substituters.health import KnownDown

MAX_FETCHED_LOG = 256 * 1024 * 1024  # bytes of a log `runner log` takes from a cache
_CHUNK = 64 * 1024


class TooLarge(RunnerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="too-large")


class Unusable(RunnerError):
    """A cache that failed, under `substituter-errors = fail`: ends the run."""


class Caches:
    """The binary caches among `substituters`, by priority, with Nix's down handling."""

    def __init__(self, substituters: Sequence[Substituter], warn: Warn, *,
                 fail_on_errors: bool = False) -> None:
        self.warn = warn
        self.fail_on_errors = fail_on_errors
        keyed: list[tuple[int, int, BinaryCache]] = []
        for i, sub in enumerate(substituters):
            if not isinstance(sub, BinaryCache) or sub.is_down:
                continue  # a program substituter has no files besides NARs
            try:
                keyed.append((sub.priority, i, sub))
            except RunnerError as e:
                self.down(sub, e)
        self.caches = [c for _, _, c in sorted(keyed, key=lambda k: (k[0], k[1]))]

    def down(self, cache: BinaryCache, e: RunnerError) -> None:
        message = (e.message if isinstance(e, KnownDown)
                   else f"substituter '{cache.name}' is unusable, skipping it: {e.message}")
        if self.fail_on_errors:
            raise Unusable(message.replace(", skipping it", ""), reason=e.reason) from None
        if cache.report_down(message):
            self.warn(message)

    def read(self, cache: BinaryCache, rel: str, limit: int) -> bytes | None:
        """`rel` from `cache`: None when it is absent or the cache is (now) down; TooLarge
        when it has more than `limit` bytes."""
        if cache.is_down:
            return None
        try:
            stream = cache.open_file(rel)
            if stream is None:
                return None
            try:
                return read_bounded(stream.read, limit, f"{cache.name.rstrip('/')}/{rel}")
            finally:
                stream.close()
        except (TooLarge, Unusable):
            raise
        except RunnerError as e:
            self.down(cache, e)
            return None


def read_bounded(read: Callable[[int], bytes], limit: int, origin: str) -> bytes:
    """Read to the end, but never more than `limit` + 1 bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"'{origin}' is larger than {limit} bytes")
        parts.append(chunk)


def fetch_log(caches: Caches, drv_path: str) -> tuple[bytes, str] | None:
    """The first cache's `log/<drv basename>` (as `nix log` asks them), with the cache's
    name; None when no cache has it. A log too large is passed over with a warning."""
    for cache in caches.caches:
        try:
            data = caches.read(cache, log_name(drv_path), MAX_FETCHED_LOG)
        except TooLarge as e:
            caches.warn(f"ignoring build log {e.message}")
            continue
        if data is not None:
            return data, cache.name
    return None


def deriver_from_caches(caches: Caches, path: str) -> str | None:
    """The deriver a cache's narinfo gives for `path` (how `nix log` finds the log of an
    output it does not have); the narinfo is only read for its name, nothing is trusted."""
    for cache in caches.caches:
        if cache.is_down:
            continue
        try:
            info = cache.query(path)
        except RunnerError as e:
            if e.reason != "bad-narinfo":
                caches.down(cache, e)
            continue
        if info is not None and info.deriver is not None:
            return info.deriver
    return None
