"""runner's store commands through a daemon (`--store daemon|unix://…`): the same
output as the local commands, each answer asked of the daemon."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, cast

from runner.daemon.store_choice import open_remote
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store.gc import GCResult

if TYPE_CHECKING:
    from runner.daemon.remote_store import RemoteStore
    from runner.store.local_store import LocalStore

# collect-garbage actions (Nix's GCOptions::GCAction)
_GC_RETURN_DEAD, _GC_DELETE_DEAD = 1, 2


def path_info(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    from runner.cli.path_info import report_path_info

    with open_remote(settings, socket_path) as store:
        # The query subset report_path_info uses is the same on a RemoteStore.
        return report_path_info(args, cast("LocalStore", store))


def gc(args: argparse.Namespace, settings: Settings, socket_path: str) -> GCResult:
    """Collect garbage through the daemon; the caller reports it as a local gc's."""
    if args.drop_failures or args.keep_outputs is not None or args.keep_derivations is not None:
        raise RunnerError("--drop-failures, --keep-outputs and --keep-derivations are the "
                          "daemon's settings, not the client's", reason="usage")
    with open_remote(settings, socket_path) as store:
        action = _GC_RETURN_DEAD if args.dry_run else _GC_DELETE_DEAD
        paths, freed = store.collect_garbage(action, max_freed=args.max_freed or 0)
    return GCResult(deleted=paths, bytes_freed=freed)
    for path in paths:
        print(path)
    count = f"{len(paths)} store paths"
    print(f"{count} would be deleted" if args.dry_run
          else f"{count} deleted, {freed / (1024 * 1024):.2f} MiB freed")
    return 0


def why_depends(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    from runner.cli.args import store_path_arg
    from runner.store.closure_info import chain_report, shortest_chain

    with open_remote(settings, socket_path) as store:
        local_view = cast("LocalStore", store)
        start = store_path_arg(local_view, args.path)
        goal = store_path_arg(local_view, args.dependency)
        chain = shortest_chain(local_view, start, goal)
    if chain is None:
        raise RunnerError(f"'{start}' does not depend on '{goal}'", reason="no-dependency")
    print("\n".join(chain_report(chain)))
    return 0


def log(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    """The derivation is found through the daemon; its log is read from the daemon's
    log directory, which is world-readable as Nix's (the protocol has no log read)."""
    from runner.build.log_target import find_log

    with open_remote(settings, socket_path) as store:
        try:
            data = find_log(store, settings.state_dir, args.target, args.name, args.attempt)
        except RunnerError as e:
            if e.reason != "no-log" or args.attempt is not None:
                raise
            from runner.cli.log_fallback import log_from_substituters

            data = log_from_substituters(store, settings, args.target, args.name, e)
    if not data:
        print("(empty log)", file=sys.stderr)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def instantiate(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    from runner.spec.load import load_spec
    from runner.spec.translate import instantiate as write_drvs

    spec = load_spec(args.spec)
    with open_remote(settings, socket_path) as store:
        result = write_drvs(spec, store, args.names or None)
    if args.json:
        print(json.dumps({k: {"drvPath": r.drv_path, "outputs": r.outputs}
                          for k, r in result.items()}, indent=2))
    else:
        for r in result.values():
            print(r.drv_path)
    return 0


def copy(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    """`copy --to URL`: path infos and closures from the daemon, the NARs dumped here
    from the world-readable store files (checked against the daemon's NAR hash).
    `copy --from URL`: the daemon substitutes the paths from URL (set-options names it:
    honoured for a trusted user, or when URL is among the daemon's substituters)."""
    from runner.cli.args import store_path_arg

    with open_remote(settings, socket_path) as store:
        local_view = cast("LocalStore", store)
        paths = [store_path_arg(local_view, p) for p in args.paths]
        if args.to:
            return _copy_to(args, store, paths)
        overrides = {"substituters": args.from_}
        if args.no_check_sigs:
            overrides["require-sigs"] = "false"
        store.client.set_options(overrides)
        for line in store.client.messages:  # e.g. the daemon ignoring an untrusted option
            print(line, file=sys.stderr)
        store.client.messages.clear()
        store.build(paths)
    for path in paths:
        print(f"copied '{path}'", file=sys.stderr)
    return 0


def _copy_to(args: argparse.Namespace, store: RemoteStore, paths: list[str]) -> int:
    from runner.substituters.configure import open_transport, parse_url
    from runner.substituters.signing import SecretKey
    from runner.substituters.writer import copy_to_cache

    url, params = parse_url(args.to)
    compression = args.compression or params.get("compression", "xz")
    if compression not in ("xz", "zstd", "none"):
        raise RunnerError(f"'{args.to}': compression must be xz, zstd or none", reason="usage")
    key = SecretKey.load(args.sign_key) if args.sign_key else None
    # The system's temp dir: the client may not write the daemon's state dir.
    written = copy_to_cache(store, paths, open_transport(url), compression=compression,
                            sign_key=key)
    for path in written:
        print(f"copied '{path}'", file=sys.stderr)
    return 0
