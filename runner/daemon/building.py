"""Builds requested over the connection: build-paths (with results), build-derivation,
ensure-path and query-missing, realised by runner's own build worker.

The worker's progress and build logs go to the client as `STDERR_NEXT`
lines; a failed build ends the operation with an error naming the failed
derivations and their failure class, as `runner build` prints it locally.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.errors import RunnerError, raise_not_valid
from runner.store import derivation
from runner.store.hashes import Hash
from runner.store.local_store import LocalStore
from runner.store.paths import parse_store_path
from runner.substituters.narinfo import NarInfo

if TYPE_CHECKING:
    from runner.build.result import BuildResult, Status
    from runner.daemon.session import Session

# Nix's BuildResult::Status numbers.
_NIX_STATUS = {"built": 0, "substituted": 1, "valid": 2, "failed": 3, "cached-failure": 7,
               "dependency-failed": 10, "timed-out": 8, "log-limit": 11, "hash-mismatch": 5,
               "setup-failed": 9, "substitution-failed": 9, "not-deterministic": 12}
_BM_NORMAL, _BM_REPAIR, _BM_CHECK = range(3)


@dataclass(frozen=True)
class DerivedPath:
    path: str  # a .drv (with `outputs`) or any store path (opaque)
    outputs: tuple[str, ...] | None = None  # None: opaque; ("*",): every output

    def to_string(self) -> str:
        return self.path if self.outputs is None else f"{self.path}!{','.join(self.outputs)}"


def parse_derived_paths(store_dir: str, texts: Iterable[str]) -> list[DerivedPath]:
    """`/store/…-x.drv!out,dev`, `…!*` or a plain store path (Nix's DerivedPath syntax)."""
    result = []
    for text in texts:
        path, bang, outputs = text.partition("!")
        parse_store_path(path, store_dir)
        if not bang:
            result.append(DerivedPath(path))
            continue
        names = tuple(o for o in outputs.split(",") if o)
        if not names:
            raise RunnerError(f"'{text}' names no outputs", reason="bad-path")
        result.append(DerivedPath(path, names))
    return result


@dataclass
class Missing:
    will_build: set[str] = field(default_factory=set)
    will_substitute: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    download_size: int = 0
    nar_size: int = 0

    def fetch(self, info: NarInfo) -> None:
        if info.path not in self.will_substitute:
            self.will_substitute.add(info.path)
            self.download_size += info.file_size or 0
            self.nar_size += info.nar_size


def query_missing(store: LocalStore, targets: list[DerivedPath],
                  offer: Callable[[str], NarInfo | None]) -> Missing:
    """What realising `targets` would do: which derivations get built, which paths get
    substituted (`offer` says who has what), and which paths nobody can produce."""
    missing = Missing()
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        target = stack.pop()
        key = target.to_string()
        if key in seen:
            continue
        seen.add(key)
        if target.outputs is None and not target.path.endswith(".drv"):
            if not store.is_valid(target.path):
                info = offer(target.path)
                if info is None:
                    missing.unknown.add(target.path)
                else:
                    missing.fetch(info)
                    stack.extend(DerivedPath(r) for r in info.references if r != info.path)
            continue
        if not store.is_valid(target.path):
            missing.unknown.add(target.path)
            continue
        if target.outputs is None:
            continue  # the .drv file itself, valid
        drv = store.read_derivation(target.path)
        wanted = drv.outputs if "*" in target.outputs else {
            n: o for n, o in drv.outputs.items() if n in target.outputs}
        invalid = [o.path for o in wanted.values() if not store.is_valid(o.path)]
        if not invalid:
            continue
        offers = [offer(p) for p in invalid]
        if all(offers):
            stack.extend(DerivedPath(p) for p in invalid)  # substituted, with references
            continue
        missing.will_build.add(target.path)
        stack.extend(DerivedPath(p, tuple(outs)) for p, outs in drv.input_drvs.items())
        stack.extend(DerivedPath(p) for p in drv.input_srcs)
    return missing


class _ClientStream:
    """A text stream for the worker's progress: each line becomes a `STDERR_NEXT`."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._session.log(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _realise(s: Session, drv_paths: list[str], mode: int) -> list[BuildResult]:
    from runner.build.derivation_goal import BuildMode
    from runner.build.progress import Progress
    from runner.build.sandboxing import choose_sandbox
    from runner.build.worker import Worker

    if mode == _BM_REPAIR:
        s.require_trust("repair paths")
    build_mode = {_BM_NORMAL: BuildMode.NORMAL, _BM_REPAIR: BuildMode.REPAIR,
                  _BM_CHECK: BuildMode.CHECK}.get(mode)
    if build_mode is None:
        raise RunnerError(f"unknown build mode {mode}", reason="usage")
    for path in drv_paths:
        if not s.store.is_valid(path):
            raise_not_valid(path)
    s.store.temp_roots.add_temp_roots(drv_paths)
    progress = Progress(_ClientStream(s), log_lines=s.settings.number("log-lines"),  # type: ignore[arg-type]
                        print_build_logs=True)
    worker = Worker(s.store, s.settings, progress,
                    lambda: choose_sandbox(s.settings, progress.warn), mode=build_mode)
    with _HangupMonitor(s.reader.fileno()):
        results = worker.run(drv_paths)
    if len(results) < len(drv_paths):
        raise RunnerError("the build stopped before every derivation was done",
                          reason="build-failed")
    return results


class _HangupMonitor:
    """While building, watch the client's socket: if the client goes away, interrupt
    the build (SIGINT to this connection's process, which the worker handles by
    stopping its builds), as Nix's daemon does, instead of building for nobody."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLRDHUP)
        poller.register(self._stop_r, select.POLLIN)
        events = dict(poller.poll())
        if self._stop_r not in events and events.get(self._fd):
            os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self) -> _HangupMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _failure_message(results: Iterable[BuildResult]) -> str:
    failed = [r for r in results if not r.status.ok]
    parts = [f"build of '{r.drv_path}' failed ({r.status.value})"
             + (f": {r.message}" if r.message else "") for r in failed]
    return "\n".join(parts)


def _drv_targets(s: Session, targets: list[DerivedPath]) -> tuple[list[str], list[str]]:
    drvs = [t.path for t in targets if t.outputs is not None]
    opaque = [t.path for t in targets if t.outputs is None]
    return list(dict.fromkeys(drvs)), opaque


def _ensure_valid(s: Session, paths: list[str]) -> None:
    from runner.daemon.substitution import ensure_valid

    s.store.temp_roots.add_temp_roots(paths)
    ensure_valid(s, paths)


def build_paths(s: Session) -> None:
    texts = s.reader.texts()
    mode = s.reader.u64() if s.minor >= 15 else _BM_NORMAL
    s.start_work()
    drvs, opaque = _drv_targets(s, parse_derived_paths(s.store.store_dir, texts))
    _ensure_valid(s, opaque)
    results = _realise(s, drvs, mode) if drvs else []
    if not all(r.status.ok for r in results):
        raise RunnerError(_failure_message(results), reason="build-failed")
    s.stop_work()
    s.writer.u64(1)


def build_paths_with_results(s: Session) -> None:
    texts = s.reader.texts()
    mode = s.reader.u64()
    s.start_work()
    targets = parse_derived_paths(s.store.store_dir, texts)
    drvs, opaque = _drv_targets(s, targets)
    _ensure_valid(s, opaque)
    results = {r.drv_path: r for r in _realise(s, drvs, mode)} if drvs else {}
    s.stop_work()
    s.writer.u64(len(targets))
    for target in targets:
        if target.outputs is None:
            s.writer.text(target.to_string())
            _write_result(s, None, {}, with_outputs=True)
        else:
            s.writer.text(target.to_string())
            result = results[target.path]
            _write_result(s, result, _built_outputs(s, result), with_outputs=True)


def build_derivation(s: Session) -> None:
    drv_path = s.reader.text()
    _read_basic_derivation(s)
    mode = s.reader.u64()
    s.start_work()
    s.require_trust("build input-addressed derivations")
    parse_store_path(drv_path, s.store.store_dir)
    if not s.store.is_valid(drv_path):
        raise RunnerError(f"derivation '{drv_path}' is not in this store: the daemon builds "
                          "only derivations whose .drv file is valid here", reason="invalid-path")
    result = _realise(s, [drv_path], mode)[0]
    s.stop_work()
    _write_result(s, result, _built_outputs(s, result), with_outputs=s.minor >= 28)


def ensure_path(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    _ensure_valid(s, [s.path(text)])
    s.stop_work()
    s.writer.u64(1)


def _read_basic_derivation(s: Session) -> None:
    """The inline derivation of build-derivation: read to stay in step (the .drv in the
    store is what gets built)."""
    r = s.reader
    for _ in range(r.num(1 << 16, "output count")):
        r.text(), r.text(), r.text(), r.text()
    r.texts()  # input sources
    r.text(), r.text()  # platform, builder
    r.texts()  # args
    for _ in range(r.num(1 << 20, "env size")):
        r.data(), r.data(1 << 26)


def _write_result(s: Session, result: BuildResult | None, outputs: dict[str, str], *,
                  with_outputs: bool) -> None:
    w = s.writer
    status: Status | None = None if result is None else result.status
    w.u64(_NIX_STATUS[status.value] if status is not None else 2)
    message = "" if result is None or result.status.ok else _failure_message([result])
    w.text(message)
    if s.minor >= 29:
        start = int(result.start_time) if result else 0
        stop = int(result.stop_time) if result else 0
        built = 1 if result is not None and result.status.value == "built" else 0
        w.u64(built).flag(False).u64(start).u64(stop)
    if with_outputs:
        w.u64(len(outputs))
        for key in sorted(outputs):
            w.text(key).text(outputs[key])


def _built_outputs(s: Session, result: BuildResult) -> dict[str, str]:
    """`DrvOutput → Realisation` JSON, as Nix reports the outputs of input-addressed builds."""
    if not result.status.ok:
        return {}
    drv = s.store.read_derivation(result.drv_path)
    digest = derivation.hash_derivation_modulo(drv, s.store.read_derivation, {})
    drv_hash = Hash("sha256", digest).to_string("base16")
    outputs = {}
    for name, path in result.outputs.items():
        key = f"{drv_hash}!{name}"
        outputs[key] = json.dumps({"dependentRealisations": {}, "id": key,
                                   "outPath": path.rsplit("/", 1)[-1], "signatures": []},
                                  separators=(",", ":"))
    return outputs
