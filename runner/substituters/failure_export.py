"""What `runner copy --to` and `runner cache serve --store` publish besides NARs: the
signed failure records of cached failures and the build logs of derivations.

Logs go to `log/<drv basename>` uncompressed, as `nix store copy-log` writes them and
as Nix 2.8's `nix log` reads them (it prints a compressed file as it is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from runner.build.logs import read_log
from runner.errors import RunnerError
from runner.store.derivation import Derivation
from runner.store.hashes import Hash
from runner.store.path_info import FailureRecord
from runner.substituters.failure_record import (
    MAX_LOG,
    CacheFailure,
    check_system,
    log_name,
    record_name,
)
from runner.substituters.signing import SecretKey
from runner.substituters.transport import Transport


class FailureStore(Protocol):
    def read_derivation(self, path: str) -> Derivation: ...
    def query_failure(self, path: str) -> FailureRecord | None: ...


@dataclass(frozen=True)
class Exported:
    record: CacheFailure
    log: bytes  # exactly the bytes of `record.log`


def truncate_log(data: bytes) -> bytes:
    """A log that fits a record: a longer one keeps its end, where the error is."""
    if len(data) <= MAX_LOG:
        return data
    note = b"[runner: log truncated to its last bytes]\n"
    return note + data[len(data) - (MAX_LOG - len(note)):]


def export_failure(store: FailureStore, state_dir: str, drv_path: str,
                   sign_key: SecretKey | None) -> Exported | None:
    """The record of `drv_path`'s cached failure (with its log), or None when it has none.
    A derivation that cannot be read, or whose system cannot be written in a record, has
    none either: there is nothing trustworthy to say about it."""
    try:
        drv = store.read_derivation(drv_path)
    except RunnerError:
        return None
    failure = next((f for f in map(store.query_failure, sorted(
        o.path for o in drv.outputs.values())) if f is not None), None)
    if failure is None or not check_system(drv.system):
        return None
    try:
        log = read_log(state_dir, drv_path)
    except RunnerError:
        log = None
    if log is None:  # the full log is gone (or never was): the tail kept with the failure
        log = failure.log_tail.encode("utf-8", "replace") + b"\n"
    log = truncate_log(log)
    record = CacheFailure(
        drv_path=drv_path, failure_class="failed", exit_status=failure.exit_status,
        time=int(failure.time), system=drv.system, log=log_name(drv_path),
        log_hash=Hash("sha256", hashlib.sha256(log).digest()), log_size=len(log))
    if sign_key is not None:
        record = record.signed(sign_key)
    return Exported(record, log)


def publish_failures(store: FailureStore, state_dir: str, drv_paths: Iterable[str],
                     transport: Transport, sign_key: SecretKey | None,
                     before_write: Callable[[], None] = lambda: None) -> list[str]:
    """Write the log, then the record, of each cached failure among `drv_paths` (so a
    reader that finds a record finds its log); returns the derivations published.
    `before_write` runs before each write (to create the cache on the first)."""
    done = []
    for drv_path in sorted(set(drv_paths)):
        exported = export_failure(store, state_dir, drv_path, sign_key)
        if exported is None:
            continue
        before_write()
        transport.write(exported.record.log, [exported.log])
        transport.write(record_name(drv_path), [exported.record.to_text().encode()])
        done.append(drv_path)
    return done


def publish_logs(state_dir: str, drv_paths: Iterable[str], transport: Transport,
                 skip: Iterable[str] = (),
                 before_write: Callable[[], None] = lambda: None) -> list[str]:
    """Upload the stored build log of each derivation that has one and whose log the
    cache lacks (as `nix store copy-log`); returns the derivations whose log was written."""
    done = []
    skipped = set(skip)
    for drv_path in sorted(set(drv_paths) - skipped):
        try:
            log = read_log(state_dir, drv_path)
        except RunnerError:
            continue  # a damaged local log is not spread
        if log is None or transport.exists(log_name(drv_path)):
            continue
        before_write()
        transport.write(log_name(drv_path), [log])
        done.append(drv_path)
    return done
