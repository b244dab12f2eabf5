"""`runner check [SPEC] [NAME…]` and `runner hook install|uninstall`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runner.build.progress import Progress
from runner.build.result import BuildResult, Status, exit_code
from runner.checks import discover, hook
from runner.checks.outcome import Outcome, outcome
from runner.checks.report import failure_details, table
from runner.cli.args import FLAG_PREFIX, setting_flag
from runner.cli.build import (
    finish_recording,
    report_flags,
    retry_policies,
    spec_substituters,
    start_recording,
)
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import check_roots
from runner.store.local_store import open_store

S = FLAG_PREFIX


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check", help="run a spec's derivations as checks and summarise them",
        description="Build the checks (derivations) of SPEC, default runner.yaml or "
                    ".runner.yaml at the repository root; all of them unless NAMEs are "
                    "given. A check passes when its derivation builds. Exits non-zero "
                    "when one fails.")
    p.add_argument("args", nargs="*", metavar="[SPEC] NAME",
                   help="the spec (default: runner.yaml or .runner.yaml at the repository "
                        "root), then the checks to run (default: all)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing when every check passes (for hooks)")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    setting_flag(p, "--fail-fast", name="keep-going", const=False,
                 help="stop at the first failing check (default: run them all)")
    p.add_argument("--rebuild-failed", action="store_true",
                   help="run checks again that failed before on the same inputs")
    p.add_argument("--forget", action="store_true",
                   help="run nothing; release the kept check results (GC roots) of SPEC's "
                        "repository (default: this one) so that `runner gc` may delete them")
    setting_flag(p, "--sandbox", name="sandbox")
    setting_flag(p, "-j", "--max-jobs", name="max-jobs")
    setting_flag(p, "-L", "--print-build-logs", name="print-build-logs")
    report_flags(p)
    p.set_defaults(func=_check, **{S + "keep-going": True})

    h = sub.add_parser("hook", help="install or remove a git pre-commit hook running "
                                    "`runner check`")
    actions = h.add_subparsers(dest="hook_command", metavar="ACTION", required=True)
    inst = actions.add_parser("install", help="write .git/hooks/pre-commit")
    inst.add_argument("spec", nargs="?", metavar="SPEC",
                      help="spec the hook checks (default: found at each run)")
    inst.add_argument("-f", "--force", action="store_true",
                      help="replace a hook runner did not write (it is kept as "
                           "pre-commit.before-runner and run before the checks)")
    inst.set_defaults(func=_hook_install)
    rm = actions.add_parser("uninstall", help="remove the hook runner installed")
    rm.set_defaults(func=_hook_uninstall)


class _CheckProgress(Progress):
    """Failures are reported after the summary, so the worker's own reports are dropped;
    `quiet` also drops the per-build lines, keeping warnings."""

    def __init__(self, *, quiet: bool, print_build_logs: bool) -> None:
        super().__init__(sys.stderr, log_lines=0, print_build_logs=print_build_logs)
        self.quiet = quiet

    def event(self, text: str) -> None:
        if not self.quiet:
            self.message(text)

    def report_failure(self, result: BuildResult) -> None:
        pass


def _split(args: list[str]) -> tuple[Path, list[str]]:
    if args and discover.looks_like_spec(args[0]):
        return Path(args[0]), args[1:]
    return discover.default_spec(Path.cwd()), args


def _check(args: argparse.Namespace, settings: Settings) -> int:
    # The build machinery and spec loading, only when checking.
    from runner.build.sandboxing import choose_sandbox
    from runner.build.worker import Worker
    from runner.spec.load import load_spec
    from runner.spec.translate import instantiate
    from runner.why.record import record_build

    if args.forget:
        return _forget(list(args.args), settings)
    spec_path, names = _split(list(args.args))
    spec = load_spec(spec_path)
    declared = spec_substituters(spec)
    with open_store(settings) as store:
        targets = instantiate(spec, store, names or None)
        progress = _CheckProgress(quiet=args.quiet,
                                  print_build_logs=settings.flag("print-build-logs"))
        worker = Worker(store, settings, progress, lambda: choose_sandbox(settings, progress.warn),
                        rebuild_failed=args.rebuild_failed, declared_substituters=declared)
        worker.retry_policies = retry_policies(args, spec, str(spec_path))
        recorder = start_recording(args, spec, progress, args.argv)
        worker.run([t.drv_path for t in targets.values()])
        record_build(settings, spec_path, targets, worker.results)
        outcomes = [outcome(key, t.drv_path, worker.results.get(t.drv_path))
                    for key, t in targets.items()]
        # Still under the worker's temporary roots: no collector can take them first.
        check_roots.keep_results(store.store_dir, store.state_dir, _repository(spec_path),
                                 {o.name: targets[o.name].outputs for o in outcomes
                                  if o.passed})
    failed = not all(o.passed for o in outcomes)
    statuses = [r.status for r in worker.results.values()]
    code = (exit_code(statuses) or exit_code([Status.FAILED])) if failed else 0
    finish_recording(recorder, args, args.argv, code)
    if args.json:
        print(json.dumps([o.to_json() for o in outcomes], indent=2))
    elif failed or not args.quiet:
        _print_summary(outcomes, settings.number("log-lines"))
    return code


def _repository(spec_path: Path) -> str:
    """Whose check results these are: the work tree holding the spec (its dir outside git)."""
    directory = spec_path.resolve().parent
    return str(discover.repo_root(directory) or directory)


def _forget(args: list[str], settings: Settings) -> int:
    """Release the check roots of SPEC's repository, or of the one we are in."""
    if args[1:] or (args and not discover.looks_like_spec(args[0])):
        raise RunnerError("--forget releases every check of a repository: give at most a "
                          "spec, no check names", reason="usage")
    if args:
        repository = _repository(Path(args[0]))
    else:
        cwd = Path.cwd().resolve()
        repository = str(discover.repo_root(cwd) or cwd)
    released = check_roots.forget(os.path.abspath(settings.state_dir), repository)
    checks = sorted({r.check for r in released})
    if checks:
        what = "1 check" if len(checks) == 1 else f"{len(checks)} checks"
        print(f"released the kept results of {what} of '{repository}': "
              f"{', '.join(checks)}", file=sys.stderr)
    else:
        print(f"no kept check results for '{repository}'", file=sys.stderr)
    return 0


def _print_summary(outcomes: list[Outcome], log_lines: int) -> None:
    details = failure_details(outcomes, log_lines)
    if details:
        print(details, end="\n\n")
    print(table(outcomes))
    sys.stdout.flush()


def _hook_install(args: argparse.Namespace, settings: Settings) -> int:
    cwd = Path.cwd()
    spec = args.spec
    if spec is not None:
        if not os.path.isfile(spec):
            raise RunnerError(f"spec '{spec}' does not exist", reason="no-spec")
        root = discover.repo_root(cwd) or cwd
        # Hooks run at the top of the work tree: make the path relative to it.
        full = (cwd / spec).resolve()
        spec = os.path.relpath(full, root.resolve()) if full.is_relative_to(root.resolve()) \
            else str(full)
    installed = hook.install(cwd, spec, force=args.force)
    print(f"installed the pre-commit hook at '{installed.hook}'", file=sys.stderr)
    if installed.saved is not None:
        print(f"{installed.saved_kind} is kept as '{installed.saved}' and runs first at every "
              "commit; its failure fails the commit", file=sys.stderr)
    return 0


def _hook_uninstall(args: argparse.Namespace, settings: Settings) -> int:
    removed = hook.uninstall(Path.cwd())
    if removed is None:
        print("no pre-commit hook installed by runner", file=sys.stderr)
    elif removed.restored is None:
        print(f"removed the pre-commit hook '{removed.hook}'", file=sys.stderr)
    else:
        print(f"removed runner's pre-commit hook and restored '{removed.hook}' from "
              f"'{removed.restored}' ({hook.kind_of(removed.hook)})", file=sys.stderr)
    return 0
