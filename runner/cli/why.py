"""`runner diff DRV1 DRV2` and `runner why SPEC NAME`: what changed, root cause first
(see docs/building.md, "What changed since it last worked")."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time

from runner.errors import RunnerError
from runner.settings import Settings
from runner.store.paths import is_in_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diff", help="explain how two derivations differ, root cause first",
                       description="Compare two .drv files: changed env, args, builder, "
                                   "system, outputs; changed inputs one level down until "
                                   "the changes that are their own; changed sources file "
                                   "by file.")
    p.add_argument("old", metavar="DRV1", help="the old derivation (a .drv store path)")
    p.add_argument("new", metavar="DRV2", help="the new derivation (a .drv store path)")
    p.add_argument("-p", "--patch", action="store_true",
                   help="show a unified diff of changed text files")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_diff)

    p = sub.add_parser("why", help="show what changed in a derivation since it last built",
                       description="Instantiate NAME of SPEC as it is now and compare it "
                                   "with its last recorded success (and its cached failure).")
    p.add_argument("spec", metavar="SPEC", help="the spec file")
    p.add_argument("name", metavar="NAME", help="a derivation of the spec")
    p.add_argument("-p", "--patch", action="store_true",
                   help="show a unified diff of changed text files")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=_why)


def _drv_arg(arg: str, store_dir: str, archived: bool) -> str:
    path = os.path.abspath(arg)
    if not path.endswith(".drv"):
        raise RunnerError(f"'{arg}' is not a derivation (a .drv store path)", reason="not-drv")
    if not is_in_store(path, store_dir):
        raise RunnerError(f"'{arg}' is not in the store '{store_dir}'", reason="bad-path")
    if not archived and not os.path.isfile(path):
        raise RunnerError(f"derivation '{arg}' does not exist", reason="not-found")
    return path


def _diff(args: argparse.Namespace, settings: Settings) -> int:
    from runner.why.diff import diff, store_loader
    from runner.why.history import Archive
    from runner.why.render import report_lines

    with Archive(settings.state_dir) as archive:
        old, new = (_drv_arg(a, settings.store_dir, archive.text(os.path.abspath(a)) is not None)
                    for a in (args.old, args.new))
        report = diff(old, new, store_loader(settings.store_dir, archive.text),
                      settings.store_dir, patches=args.patch)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(report_lines(report)))
    return 0


def _age(then: float) -> str:
    from runner.build.failure_cache import describe_age

    return describe_age(time.time() - then)


def _why(args: argparse.Namespace, settings: Settings) -> int:
    from runner.build.failure_cache import find_failure
    from runner.spec.load import load_spec
    from runner.spec.translate import instantiate
    from runner.store.local_store import open_store
    from runner.why import history
    from runner.why.diff import diff, store_loader
    from runner.why.render import report_lines

    spec_path = os.path.realpath(args.spec)
    spec = load_spec(args.spec)
    with open_store(settings) as store:
        current = instantiate(spec, store, [args.name])[args.name]
        cached = find_failure(store, current.outputs.values())
    success = history.last(settings.state_dir, settings.store_dir, spec_path, args.name, ok=True)
    failure = history.last(settings.state_dir, settings.store_dir, spec_path, args.name,
                           ok=False)
    retry = f"runner build {shlex.quote(args.spec)} {shlex.quote(args.name)}"
    if cached is not None:
        retry += " --rebuild-failed"
    # A failure that a later success of the same drv superseded (a flaky build) is news
    # to nobody; a cached failure is authoritative.
    same_failure = cached is not None or (
        failure is not None and failure.drv_path == current.drv_path
        and (success is None or failure.time > success.time))
    report = None
    if success is not None:
        with history.Archive(settings.state_dir) as archive:
            report = diff(success.drv_path, current.drv_path,
                          store_loader(settings.store_dir, archive.text), settings.store_dir,
                          patches=args.patch)
    if args.json:
        print(json.dumps({
            "spec": spec_path, "name": args.name, "drvPath": current.drv_path,
            "lastSuccess": success.to_json() if success else None,
            "lastFailure": failure.to_json() if failure else None,
            "cachedFailure": None if cached is None else {"time": cached.time,
                                                          "exitStatus": cached.exit_status},
            "nothingChangedSinceFailure": same_failure,
            "retry": retry if same_failure else None,
            "diff": report.to_json() if report else None,
        }, indent=2, ensure_ascii=False))
    else:
        lines = []
        if success is not None and report is not None:
            lines.append(f"'{args.name}' last succeeded {_age(success.time)} as "
                         f"{success.drv_path}")
            lines += (["nothing changed since then"] if report.identical
                      else report_lines(report))
        if same_failure:
            when = _age(cached.time if cached else failure.time if failure else time.time())
            what = "its cached failure" if cached else "its last failure"
            lines.append(f"nothing changed since {what} ({when}): same derivation "
                         f"{current.drv_path}")
            lines.append(f"to retry: {retry}")
        if lines:
            print("\n".join(lines))
    if success is None:
        raise RunnerError(f"no recorded success of '{args.name}' in '{args.spec}' to compare "
                          "with (history starts with its first build)", reason="no-success")
    return 0
