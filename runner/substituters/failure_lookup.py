"""Asking the binary caches whether a derivation is known to fail
(setting `use-substituted-failures`).

A record counts only when everything checks out: it parses, it is about the
derivation asked for, a key in `trusted-public-keys` signed it (always: a
cache's `?trusted=1` and `require-sigs = false` do not apply to records, since a
record stops a build rather than supplying one), and its log has exactly the
size and hash it states. Anything less is one warning line and the next cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.store.hashes import Hash
from runner.substituters.binary_cache import BinaryCache
from runner.substituters.failure_record import (
    MAX_RECORD,
    CacheFailure,
    parse,
    record_name,
)
from runner.substituters.log_fetch import Caches, TooLarge, Unusable
from runner.substituters.signing import parse_public_keys


@dataclass(frozen=True)
class FoundFailure:
    record: CacheFailure
    log: bytes
    cache: str  # the cache's URL
    key: str  # the name of the trusted key that signed it


def find_failure(caches: Caches, drv_path: str, store_dir: str) -> FoundFailure | None:
    """The first cache's valid, trusted record of `drv_path`'s failure, or None."""
    rel = record_name(drv_path)
    for cache in caches.caches:
        origin = f"{cache.name.rstrip('/')}/{rel}"
        try:
            found = _check(caches, cache, rel, origin, drv_path, store_dir)
        except Unusable:
            raise
        except RunnerError as e:
            caches.warn(f"ignoring failure record '{origin}': {_why(e)}")
            continue
        if found is not None:
            return found
    return None


def _why(e: RunnerError) -> str:
    # The parser's messages name the record already; one short line is enough here.
    if e.reason == "bad-failure-record":
        return e.message.split("' is malformed: ", 1)[-1]
    return e.message


def _check(caches: Caches, cache: BinaryCache, rel: str, origin: str, drv_path: str,
           store_dir: str) -> FoundFailure | None:
    data = caches.read(cache, rel, MAX_RECORD)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunnerError("it is not UTF-8 text", reason="bad-failure-record") from None
    record = parse(text, store_dir, origin)
    if record.drv_path != drv_path:
        raise RunnerError(f"it describes '{record.drv_path}', not '{drv_path}'",
                          reason="bad-failure-record")
    keys = parse_public_keys(cache.trusted_keys)
    key = record.signer(keys)
    if key is None:
        reason = "unsigned" if not record.sigs else "untrusted-key"
        raise RunnerError(f"{record.why_untrusted(keys)} (see trusted-public-keys)",
                          reason=reason)
    try:
        log = caches.read(cache, record.log, record.log_size)
    except TooLarge:
        raise RunnerError(f"its log is larger than the {record.log_size} bytes it states",
                          reason="size-mismatch") from None
    if log is None:
        if cache.is_down:
            return None
        raise RunnerError(f"its log '{record.log}' is missing", reason="no-log")
    if len(log) != record.log_size:
        raise RunnerError(f"its log has {len(log)} bytes, not the {record.log_size} it "
                          "states", reason="size-mismatch")
    got = Hash("sha256", hashlib.sha256(log).digest())
    if got != record.log_hash:
        raise RunnerError(f"its log has hash {got}, not the {record.log_hash} it states",
                          reason="hash-mismatch")
    return FoundFailure(record, log, cache.name, key)
