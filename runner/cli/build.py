"""`runner build`, `runner log` and `runner store failed list|clear`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from runner.cli.args import setting_flag, store_flag
from runner.daemon.store_choice import daemon_socket
from runner.errors import RunnerError
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.build.progress import Progress
    from runner.build.result import BuildResult
    from runner.build.retry import RetryPolicies
    from runner.report.run import RunRecorder
    from runner.spec.model import Spec
    from runner.store.derivation import Derivation
    from runner.store.local_store import LocalStore
    from runner.substituters.base import SubstituterDecl

# The build machinery is imported by the handlers that use it: `runner --help`,
# `runner log` and a no-op `runner build` do not pay for it.



def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="build derivations of a spec",
                       description="Instantiate SPEC and realise the named derivations "
                                   "(all when none are named).")
    p.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="derivations to build (default: all of the spec's)")
    p.add_argument("-o", "--out-link", default="result", metavar="PATH",
                   help="base name of the result symlinks (default: result)")
    p.add_argument("--no-out-link", action="store_true", help="create no result symlinks")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be built, fetched or fail from the cache")
    p.add_argument("--json", action="store_true", help="print per-derivation results as JSON")
    p.add_argument("--rebuild-failed", action="store_true",
                   help="ignore and clear cached failures of the requested builds")
    store_flag(p)
    setting_flag(p, "--sandbox", name="sandbox")
    setting_flag(p, "--remote", name="remote-builders", metavar="URL",
                 help="build on this REAPI endpoint (grpc://host:port, grpcs://…, "
                      "unix:/path); see docs/remote.md")
    setting_flag(p, "-j", "--max-jobs", name="max-jobs")
    setting_flag(p, "--cores", name="cores")
    setting_flag(p, "-k", "--keep-going", name="keep-going")
    setting_flag(p, "-K", "--keep-failed", name="keep-failed")
    setting_flag(p, "--timeout", name="timeout", metavar="SECONDS")
    setting_flag(p, "--max-silent-time", name="max-silent-time", metavar="SECONDS")
    setting_flag(p, "--max-log-size", name="max-log-size", metavar="BYTES")
    setting_flag(p, "-L", "--print-build-logs", name="print-build-logs")
    setting_flag(p, "--no-substitute", name="substitute", const=False,
                 help="build everything locally; ask no substituter")
    setting_flag(p, "--fallback", name="fallback")
    setting_flag(p, "--substituter-errors", name="substituter-errors")
    report_flags(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="build valid outputs again and fail (104) if they differ")
    mode.add_argument("--repair", action="store_true",
                      help="rebuild or fetch again outputs (and inputs) whose files are corrupt")
    p.set_defaults(func=_build)

    log = sub.add_parser("log", help="print the build log of a derivation",
                         description="TARGET is a .drv path, an output path, or a spec "
                                     "followed by a derivation name.")
    log.add_argument("target", metavar="DRV|OUTPUT|SPEC",
                     help="a .drv path, an output path (or a link to one), or a spec")
    log.add_argument("name", nargs="?", metavar="NAME",
                     help="the derivation of the spec whose log to print")
    log.add_argument("--attempt", type=int, metavar="K",
                     help="the log of attempt K of a retried build (default: the last)")
    store_flag(log)
    log.set_defaults(func=_log)


def report_flags(p: argparse.ArgumentParser) -> None:
    """`--junit`, `--json-events[-logs]` and `--report`: what a run leaves for CI and people
    (docs/test-pipelines.md)."""
    p.add_argument("--junit", metavar="FILE",
                   help="write one JUnit XML for the run: each derivation a testsuite "
                        "(cached results included and marked)")
    p.add_argument("--json-events", metavar="FILE",
                   help="write newline-delimited JSON events as they happen ('-': stdout; "
                        "schemas/events.schema.json)")
    p.add_argument("--json-events-logs", action="store_true",
                   help="also write every build log line as a log-line event")
    p.add_argument("--report", metavar="FILE.html",
                   help="write a self-contained HTML report of the run (timeline, root "
                        "causes, failing test cases)")
    p.add_argument("--retries", type=int, metavar="N",
                   help="retry every failed build (builder exit or timeout) up to N times "
                        "in a fresh build directory, overriding the spec's 'retries:'")


def retry_policies(args: argparse.Namespace, spec: Spec, spec_path: str) -> RetryPolicies:
    """The spec's `retries:`/`flaky:` and `--retries N` (docs/test-pipelines.md)."""
    from runner.build.retry import MAX_RETRIES, RetryPolicies

    if args.retries is not None and not 0 <= args.retries <= MAX_RETRIES:
        raise RunnerError(f"--retries must be between 0 and {MAX_RETRIES}, not {args.retries}",
                          reason="usage", exit_code=1)
    return RetryPolicies.for_spec(spec, os.path.abspath(spec_path), args.retries)


def start_recording(args: argparse.Namespace, spec: Spec, progress: Progress,
                    argv: list[str]) -> RunRecorder:
    """The run's recorder, observing `progress`; `run-started` is written at once."""
    from runner.report.run import RunRecorder, open_events

    events = open_events(args.json_events, args.json_events_logs)
    recorder = RunRecorder.for_spec(spec, progress, events)
    progress.observers.append(recorder)
    if events is not None:
        events.run_started(argv, list(args.names) if hasattr(args, "names") else [])
    return recorder


def finish_recording(recorder: RunRecorder, args: argparse.Namespace, argv: list[str],
                     code: int) -> None:
    """Write `--junit` and `--report`, end the event stream."""
    try:
        if args.junit:
            recorder.write_junit(args.junit)
        if args.report:
            recorder.write_report(args.report, argv, code)
    finally:
        recorder.finish(code)
        if recorder.events is not None:
            recorder.events.close()


def register_failed(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`runner store failed list|clear`."""
    failed = actions.add_parser("failed", help="list or clear cached build failures")
    failed_sub = failed.add_subparsers(dest="failed_command", metavar="ACTION", required=True)
    listing = failed_sub.add_parser("list", help="list cached failures")
    listing.add_argument("--json", action="store_true", help="print the failures as JSON")
    listing.set_defaults(func=_failed_list)
    clear = failed_sub.add_parser("clear", help="forget cached failures (all, or of PATHs)")
    clear.add_argument("paths", nargs="*", metavar="PATH",
                       help="output paths whose failures to forget (default: all)")
    clear.set_defaults(func=_failed_clear)


def _build(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the worker pulls in the whole build machinery, which
    # `runner log`, `runner store failed` and every other command do not need.
    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_build

        if args.retries is not None:  # the daemon's worker builds, without retries
            raise RunnerError("--retries is not supported when building through a daemon",
                              reason="usage")
        return client_build.build(args, settings, socket_path)
    started = time.monotonic()
    simple = not (args.dry_run or args.json or args.check or args.repair or args.rebuild_failed
                  or args.junit or args.json_events or args.report)
    if simple and _all_valid_from_cache(args, settings, started):
        return 0
    from runner.build.derivation_goal import BuildMode
    from runner.build.out_links import create_out_links
    from runner.build.progress import make_progress
    from runner.build.sandboxing import choose_sandbox
    from runner.build.worker import Worker
    from runner.spec import eval_cache
    from runner.spec.load import load_spec
    from runner.spec.targets import parse_targets
    from runner.spec.translate import instantiate
    from runner.store.local_store import open_store
    from runner.why.record import record_build

    spec = load_spec(args.spec)
    wanted = {t.key: t for t in parse_targets(spec, args.names)}  # NAME, NAME^OUT, NAME^*
    declared = spec_substituters(spec)
    with open_store(settings) as store:
        written: dict[str, Derivation] = {}
        targets = instantiate(spec, store, list(wanted) or None, written)
        drv_paths = [inst.drv_path for inst in targets.values()]
        picked = [wanted[k].pick(i.outputs) if k in wanted else i.outputs
                  for k, i in targets.items()]  # the outputs printed and linked
        if not spec.inputs:
            eval_cache.record(settings.state_dir, store.store_dir, args.spec, args.names,
                              spec.fingerprints, eval_cache.Entry(
                                  drv_paths, list(zip(drv_paths, picked, strict=True))))
        if args.dry_run:
            return _dry_run(store, drv_paths, args, settings, declared)
        progress = make_progress(log_lines=settings.number("log-lines"),
                                 print_build_logs=settings.flag("print-build-logs"))
        mode = (BuildMode.CHECK if args.check else BuildMode.REPAIR if args.repair
                else BuildMode.NORMAL)
        worker = Worker(store, settings, progress, lambda: choose_sandbox(settings, progress.warn),
                        rebuild_failed=args.rebuild_failed, declared_substituters=declared,
                        mode=mode, known=written)
        worker.retry_policies = retry_policies(args, spec, args.spec)
        recorder = start_recording(args, spec, progress, args.argv)
        results = worker.run(drv_paths)
        record_build(settings, args.spec, targets, worker.results)
        print(progress.summary(), file=sys.stderr)
        everything = list(worker.results.values())
        ok = len(results) == len(drv_paths) and all(r.status.ok for r in results)
        failure = None if ok else _failure(results, everything)
        finish_recording(recorder, args, args.argv, failure.exit_code if failure else 0)
        if args.json:
            print(json.dumps([r.to_json() for r in everything], indent=2))
        elif ok:
            for outputs in picked:
                for _, path in sorted(outputs.items()):
                    print(path)
        if ok and not args.no_out_link:
            create_out_links(settings.store_dir, settings.state_dir, args.out_link, picked)
        if failure is not None:
            raise failure
    return 0


def _all_valid_from_cache(args: argparse.Namespace, settings: Settings,
                          started: float) -> bool:
    """The no-op fast path: an unchanged spec (eval cache) whose outputs are all valid
    needs no parsing, no goals and no locks; print and link as a build would."""
    from runner.spec import eval_cache
    from runner.store.quick_validity import all_valid

    entry = eval_cache.lookup(settings.state_dir, settings.store_dir, args.spec, args.names)
    if entry is None:
        return False
    # Open until linked: the temp roots keep the paths.
    with all_valid(settings.store_dir, settings.state_dir, entry.paths) as valid:
        if not valid:
            return False
        lines = [path for _, outputs in entry.targets for _, path in sorted(outputs.items())]
        if lines:
            print("\n".join(lines))
        print(f"0 built, 0 substituted, {len(entry.targets)} cached, 0 failed "
              f"in {time.monotonic() - started:.2f}s", file=sys.stderr)
        if not args.no_out_link:
            from runner.build.out_links import create_out_links

            create_out_links(settings.store_dir, settings.state_dir, args.out_link,
                             [outputs for _, outputs in entry.targets])
    return True


def _failure(results: list[BuildResult], everything: list[BuildResult]) -> RunnerError:
    from runner.build.result import exit_code

    failed = [r.drv_path for r in results if not r.status.ok]
    if not failed:  # stopped early: name the builds that failed instead
        failed = [r.drv_path for r in everything if not r.status.ok and not r.failed_dependency]
    names = ", ".join(f"'{p}'" for p in failed) or "the requested derivations"
    return RunnerError(f"build of {names} failed", reason="build-failed",
                       exit_code=exit_code(r.status for r in everything) or 100)


def spec_substituters(spec: Spec) -> list[SubstituterDecl]:
    """A spec's `substituters:` (the priority they declare is applied with the others'
    when substituters are opened). A relative program path (`./fetch`) is relative to
    the spec file."""
    from runner.substituters.base import SubstituterDecl

    decls = []
    for entry in spec.substituters:
        command = entry.command
        if command and command[0].startswith(("./", "../")):
            here = os.path.dirname(os.path.abspath(entry.pos.file))
            command = (os.path.normpath(os.path.join(here, command[0])), *command[1:])
        decls.append(SubstituterDecl(url=entry.url, command=command,
                                     trusted_public_keys=entry.trusted_public_keys,
                                     origin=str(entry.pos), priority=entry.priority))
    return decls


def _dry_run(store: LocalStore, drv_paths: list[str], args: argparse.Namespace,
             settings: Settings, declared: list[SubstituterDecl]) -> int:
    from runner.build import dry_run
    from runner.build.unused_caches import CacheWatch
    from runner.substituters.configure import open_substituters, print_warning

    use_cache = settings.flag("cache-failures") and not args.rebuild_failed
    watch = CacheWatch(open_substituters(settings, declared, warn=print_warning))
    p = dry_run.plan(store, drv_paths, use_failure_cache=use_cache,
                     find=dry_run.offers(store, watch, settings))
    if args.json:
        print(json.dumps(p.to_json(), indent=2))
    else:
        print(dry_run.describe(p), file=sys.stderr)
    for line in watch.lines(dry_run.built_outputs(p)):  # why no cache helps: one per reason
        print(line, file=sys.stderr)
    return 0


def _log(args: argparse.Namespace, settings: Settings) -> int:
    from runner.build.log_target import kept_junit, locate_log
    from runner.cli.log_fallback import log_from_substituters
    from runner.store.local_store import open_store

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        return client_cli.log(args, settings, socket_path)
    with open_store(settings) as store:
        drv_path: str | None
        try:
            drv_path, data = locate_log(store, settings.state_dir, args.target, args.name,
                                        args.attempt)
        except RunnerError as e:
            if e.reason != "no-log" or args.attempt is not None:
                raise  # a retried build's attempts are never in a cache
            drv_path, data = None, log_from_substituters(store, settings, args.target,
                                                              args.name, e)
    if not data:  # said on stderr: stdout stays the log's exact (empty) contents
        print("(empty log)", file=sys.stderr)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    if drv_path and (cases := kept_junit(settings.state_dir, drv_path, args.attempt)):
        print(cases, file=sys.stderr)  # the failed attempt's test cases, kept with it
    return 0


def register_flaky(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`runner store flaky list`."""
    flaky = actions.add_parser("flaky", help="list derivations that passed only on a retry")
    flaky_sub = flaky.add_subparsers(dest="flaky_command", metavar="ACTION", required=True)
    listing = flaky_sub.add_parser("list", help="flakiest first: spec, name, drv, passes "
                                                "on a retry and the last time")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=_flaky_list)


def _flaky_list(args: argparse.Namespace, settings: Settings) -> int:
    from runner.build.failure_cache import describe_age
    from runner.build.flaky_history import list_flaky

    entries = list_flaky(settings.state_dir)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    if not entries:
        print("no derivation has passed only on a retry", file=sys.stderr)
    now = time.time()
    for e in entries:
        print(f"{e.spec} {e.name}: flaky {e.passes} time{'s' if e.passes != 1 else ''}, "
              f"last {describe_age(now - e.last_time)} (passed on attempt "
              f"{e.last_attempt}/{e.attempts}); {e.drv_path}")
    return 0


def _failed_list(args: argparse.Namespace, settings: Settings) -> int:
    from runner.build.failure_cache import attempts_of, describe_age
    from runner.store.local_store import open_store

    with open_store(settings) as store:
        records = store.list_failures()
    tried = {r.drv_path: attempts_of(settings.state_dir, r.drv_path) if r.drv_path else None
             for r in records}
    if args.json:
        print(json.dumps([{"path": r.path, "time": r.time, "exitStatus": r.exit_status,
                           "drvPath": r.drv_path}
                          | ({"attempts": list(a)} if (a := tried[r.drv_path]) else {})
                          for r in records], indent=2))
        return 0
    now = time.time()
    for r in records:
        status = "" if r.exit_status is None else f", exit status {r.exit_status}"
        if a := tried[r.drv_path]:
            status += f", failed {a[0]}/{a[1]} attempts"
        print(f"{r.path}  (failed {describe_age(now - r.time)}{status}; {r.drv_path})")
    return 0


def _failed_clear(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.local_store import open_store

    with open_store(settings) as store:
        paths = [os.path.abspath(p) for p in args.paths] if args.paths else None
        count = store.clear_failures(paths)
    print(f"cleared {count} cached failure{'s' if count != 1 else ''}", file=sys.stderr)
    return 0
