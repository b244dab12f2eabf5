"""The operation table (op code → handler) and the operations on options and maintenance.

Handlers live with their kind: query_ops.py, add_ops.py, gc_ops.py, and
building.py for builds; session.py has the connection they act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from runner.daemon import add_ops, gc_ops, query_ops
from runner.daemon.options import read_options
from runner.daemon.protocol import Op
from runner.daemon.session import Session
from runner.daemon.wire import Reader
from runner.errors import RunnerError


def _optimise_store(s: Session) -> None:
    from runner.store.optimise import optimise_store

    s.start_work()
    s.log(optimise_store(s.store).summary())
    s.stop_work()
    s.writer.u64(1)


def _verify_store(s: Session) -> None:
    from runner.store.verify import verify_store

    check_contents = s.reader.flag()
    repair = s.reader.flag()
    s.start_work()
    if repair:
        s.require_trust("repair paths")
    rebuild = None
    if repair:
        from runner.build.repair import repair_paths

        def rebuild(paths: list[str]) -> list[str]:
            return repair_paths(s.store, paths, s.settings, warn=s.log)
    report = verify_store(s.store, check_contents=check_contents, repair=repair,
                          rebuild=rebuild)
    for line in report.problems:
        s.log(f"problem: {line}")
    s.stop_work()
    s.writer.flag(not report.ok)


def _set_options(s: Session) -> None:
    options = read_options(s.reader, s.minor)
    s.start_work()
    s.options = options
    s.settings = options.apply(s.settings, trusted=s.peer.trusted, warn=s.log)
    s.stop_work()


def _unsupported(name: str, read_args: Callable[[Reader], object]) -> Callable[[Session], None]:
    """An obsolete operation whose arguments are known: refused, the connection goes on."""
    def handler(s: Session) -> NoReturn:
        read_args(s.reader)
        s.start_work()
        raise RunnerError(f"operation '{name}' is obsolete and not supported by this daemon",
                          reason="unsupported")
    return handler


def _build_op(name: str) -> Callable[[Session], None]:
    def handler(s: Session) -> None:
        from runner.daemon import building

        getattr(building, name)(s)
    return handler


HANDLERS: dict[int, Callable[[Session], None]] = {
    **query_ops.HANDLERS,
    **add_ops.HANDLERS,
    **gc_ops.HANDLERS,
    Op.BUILD_PATHS: _build_op("build_paths"),
    Op.BUILD_PATHS_WITH_RESULTS: _build_op("build_paths_with_results"),
    Op.BUILD_DERIVATION: _build_op("build_derivation"),
    Op.ENSURE_PATH: _build_op("ensure_path"),
    Op.EXPORT_PATH: _unsupported("export-path", lambda r: (r.text(), r.u64())),
    Op.SET_OPTIONS: _set_options,
    Op.OPTIMISE_STORE: _optimise_store,
    Op.VERIFY_STORE: _verify_store,
}
