"""Store maintenance: `runner gc`, `runner why-depends` and `runner store delete | add-root |
optimise | verify` (see docs/maintenance.md)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from runner.cli.args import store_flag, store_path_arg
from runner.daemon.store_choice import daemon_socket
from runner.errors import RunnerError, raise_not_valid
from runner.settings import Settings
from runner.store.local_store import open_store

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gc", help="delete store paths that no GC root keeps alive")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.add_argument("--max-freed", type=_bytes, metavar="BYTES",
                   help="stop after freeing this much (suffixes K, M, G, T)")
    p.add_argument("--keep-outputs", action="store_true", default=None,
                   help="keep the outputs of live derivations (setting keep-outputs)")
    p.add_argument("--keep-derivations", action="store_true", default=None,
                   help="keep the derivations of live outputs (setting keep-derivations, "
                        "on by default)")
    p.add_argument("--drop-failures", action="store_true",
                   help="also forget every cached build failure")
    p.add_argument("--json", action="store_true",
                   help="print what was (or would be) deleted and the bytes freed as JSON")
    store_flag(p)
    p.set_defaults(func=_gc)

    p = sub.add_parser("why-depends", help="show why PATH depends on DEPENDENCY")
    p.add_argument("path", metavar="PATH", help="the store path that depends")
    p.add_argument("dependency", metavar="DEPENDENCY", help="the store path depended on")
    store_flag(p)
    p.set_defaults(func=_why_depends)


def register_store(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The maintenance actions of `runner store`."""
    sub = actions
    p = sub.add_parser("delete", help="delete specific store paths (refused if still in use)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="store paths to delete")
    p.set_defaults(func=_delete)

    p = sub.add_parser("add-root", help="create a symlink LINK -> PATH that is a GC root")
    p.add_argument("link", metavar="LINK", help="the symlink to create")
    p.add_argument("path", metavar="PATH", help="the store path it roots")
    p.set_defaults(func=_add_root)

    p = sub.add_parser("roots", help="list every GC root: out-links, roots under gcroots/, "
                                     "kept check results, temporary roots")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_roots)

    p = sub.add_parser("optimise", help="hard-link identical files in the store")
    p.set_defaults(func=_optimise)

    p = sub.add_parser("verify", help="check the store database against the files")
    p.add_argument("--check-contents", action="store_true",
                   help="also recompute every path's NAR hash (slow)")
    p.add_argument("--repair", action="store_true",
                   help="rebuild or re-substitute broken paths; remove dangling rows and "
                        "broken paths that cannot be repaired and nothing refers to")
    p.add_argument("--json", action="store_true",
                   help="print each problem and what was repaired as JSON")
    p.set_defaults(func=_verify)


def _bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M, got '{text}'")
    return int(match.group(1)) * _SUFFIXES[match.group(2).upper()]


def _gc(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.gc import GCOptions, collect_garbage

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        result = client_cli.gc(args, settings, socket_path)
    else:
        options = GCOptions(dry_run=args.dry_run, max_freed=args.max_freed,
                            drop_failures=args.drop_failures,
                            **_keep_options(settings, args.keep_outputs, args.keep_derivations))
        with open_store(settings) as store:
            result = collect_garbage(store, options)
    for repository in result.released_repositories:
        verb = "would release" if args.dry_run else "released"
        print(f"{verb} the check results of '{repository}' (the repository is gone)",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(dry_run=args.dry_run), indent=2))
        return 0
    for path in [*result.leftovers, *result.deleted]:  # in the order they go
        print(path)
    print(result.summary(dry_run=args.dry_run))
    if result.failures_dropped:
        print(f"{result.failures_dropped} cached build failures dropped")
    return 0


def _keep_options(settings: Settings, outputs: bool | None = None,
                  derivations: bool | None = None) -> dict[str, bool]:
    """What `gc` keeps beyond the closure of the roots: a flag wins over the setting."""
    return {"keep_outputs": settings.flag("keep-outputs") if outputs is None else outputs,
            "keep_derivations": (settings.flag("keep-derivations")
                                 if derivations is None else derivations)}


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.gc import delete_paths

    with open_store(settings) as store:
        # Not `_store_path`: deleting through a `result` link would be a surprise.
        paths = [os.path.abspath(p) for p in args.paths]
        result = delete_paths(store, paths)
    for path in [*result.deleted, *result.leftovers]:
        print(path)
    print(result.summary())
    return 0


def _add_root(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.roots import add_perm_root

    with open_store(settings) as store:
        path = store_path_arg(store, args.path)
        if not store.is_valid(path):
            raise_not_valid(path)
        print(add_perm_root(store.store_dir, store.state_dir, path, args.link))
    return 0


def _roots(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.root_listing import list_roots

    with open_store(settings) as store:
        roots = list_roots(store.store_dir, store.state_dir)
    if args.json:
        print(json.dumps([r.to_json() for r in roots], indent=2))
        return 0
    for root in roots:
        print(f"{root.describe()} -> {root.store_path}")
    return 0


def _optimise(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.optimise import optimise_store

    with open_store(settings) as store:
        print(optimise_store(store).summary())
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from runner.build.repair import repair_paths
    from runner.store.gc import GCOptions
    from runner.store.verify import verify_store

    with open_store(settings) as store:
        report = verify_store(store, check_contents=args.check_contents, repair=args.repair,
                              rebuild=lambda paths: repair_paths(store, paths, settings),
                              keep=GCOptions(**_keep_options(settings)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    for line in report.problems if not args.json else ():
        print(f"problem: {line}")
    for line in report.fixed if not args.json else ():
        print(f"fixed: {line}")
    if report.ok:
        if not args.json:
            print("store is consistent" if not report.problems else "all problems fixed")
        return 0
    if args.repair and not args.json:
        for line in report.unfixed:
            print(f"not fixed: {line}")
    raise RunnerError(f"store verification found {len(report.unfixed)} problem(s)"
                      + ("" if args.repair else "; run with --repair to fix what can be fixed"),
                      reason="verify-failed")


def _why_depends(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store.closure_info import chain_report, shortest_chain

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        return client_cli.why_depends(args, settings, socket_path)
    with open_store(settings) as store:
        start = store_path_arg(store, args.path)
        goal = store_path_arg(store, args.dependency)
        chain = shortest_chain(store, start, goal)
        if chain is None:
            raise RunnerError(f"'{start}' does not depend on '{goal}'", reason="no-dependency")
        print("\n".join(chain_report(chain)))
    return 0
