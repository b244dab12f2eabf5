"""`runner build --store daemon|unix://…`: instantiate by adding the `.drv` files
through the daemon (add-to-store, text), realise them with build-paths while the
daemon streams the log, and exit as a local build would (0, or 100-104).

The daemon may be runner's or Nix's own `nix-daemon`: only the worker protocol is
used, and the failure class is read from the error message (runner's daemon says
`failed (timed-out)`; Nix words it: `timed out`, `hash mismatch`, …)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

from runner.daemon.remote_store import RemoteStore
from runner.daemon.store_choice import open_remote
from runner.errors import RunnerError
from runner.settings import Settings

_MODES = {"normal": 0, "repair": 1, "check": 2}
_RUNNER_CLASS = re.compile(r"failed \(([a-z-]+)\)")


def build(args: argparse.Namespace, settings: Settings, socket_path: str) -> int:
    from runner.spec import eval_cache

    for flag in ("json", "rebuild_failed"):
        if getattr(args, flag):
            raise RunnerError(f"--{flag.replace('_', '-')} is not available through the "
                              "daemon (use --store local as the store's owner)",
                              reason="usage")
    started = time.monotonic()
    with open_remote(settings, socket_path) as store:
        entry = eval_cache.lookup(_cache_root(settings), store.store_dir, args.spec,
                                  args.names)
        # The no-op path: the paths an unchanged spec gives, one batched query.
        if (entry is not None and not (args.check or args.repair)
                and store.valid_paths(entry.paths) == set(entry.paths)):
            picked = [dict(outputs) for _, outputs in entry.targets]
            _finish(store, args, picked, f"0 built, {len(picked)} cached", started)
            return 0
        drv_paths, picked, outputs = _instantiate(args, settings, store)
        if args.dry_run:
            print(describe_missing(*store.query_missing(drv_paths)), file=sys.stderr)
            return 0
        if args.check or args.repair or store.valid_paths(outputs) != set(outputs):
            store.client.on_message = _print_line
            mode = _MODES["check" if args.check else "repair" if args.repair else "normal"]
            try:
                store.build(drv_paths, mode)
            except RunnerError as e:
                raise RunnerError(e.message, reason="build-failed",
                                  exit_code=failure_exit_code(e.message)) from None
            finally:
                store.client.on_message = None
        _finish(store, args, picked, f"{len(picked)} done", started)
    return 0


def _instantiate(args: argparse.Namespace, settings: Settings, store: RemoteStore
                 ) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """The targets as build-paths names them, the outputs to print and link, and every
    output of the derivations built."""
    from runner.spec import eval_cache
    from runner.spec.load import load_spec
    from runner.spec.targets import parse_targets
    from runner.spec.translate import instantiate

    spec = load_spec(args.spec)
    wanted = {t.key: t for t in parse_targets(spec, args.names)}
    targets = instantiate(spec, store, list(wanted) or None)
    picked = [wanted[k].pick(i.outputs) if k in wanted else i.outputs
              for k, i in targets.items()]
    drvs = [f"{i.drv_path}!{','.join(sorted(i.outputs))}" for i in targets.values()]
    if not spec.inputs:  # as a local build: a cache, written only where the user may
        drv_paths = [i.drv_path for i in targets.values()]
        eval_cache.record(_cache_root(settings), store.store_dir, args.spec, args.names,
                          spec.fingerprints,
                          eval_cache.Entry(drv_paths, list(zip(drv_paths, picked, strict=True))))
    everything = [p for i in targets.values() for p in i.outputs.values()]
    return drvs, picked, everything


def _cache_root(settings: Settings) -> str:
    """Where the eval cache lives: the state dir when this user may write it, else the
    user's own cache dir (a user of a shared daemon cannot write its state dir). Only
    the user's own no-op builds read it, and every path it names is checked valid on
    the daemon before it is trusted."""
    if os.access(settings.state_dir, os.W_OK):
        return settings.state_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "runner", "daemon-client")


def _finish(store: RemoteStore, args: argparse.Namespace, picked: Sequence[Mapping[str, str]],
            summary: str, started: float) -> None:
    print(f"{summary} through the daemon in {time.monotonic() - started:.2f}s",
          file=sys.stderr)
    for outputs in picked:
        for _, path in sorted(outputs.items()):
            print(path)
    if not args.no_out_link:
        link_outputs(store, args.out_link, picked)


def link_outputs(store: RemoteStore, base: str, picked: Sequence[Mapping[str, str]]) -> None:
    """`result` links, registered as GC roots by the daemon (add-indirect-root): the
    client may not write the daemon's state directory."""
    from runner.build.out_links import link_names, point_link, refuse_non_links

    pairs = link_names(base, picked)
    refuse_non_links(pairs)
    for link, target in pairs:
        point_link(link, target)
        store.add_indirect_root(os.path.abspath(link))


def describe_missing(build: list[str], fetch: list[str], unknown: list[str],
                     download: int, unpacked: int) -> str:
    """query-missing's answer, worded as a local `--dry-run`."""
    from runner.build.dry_run import _these

    lines: list[str] = []
    if build:
        lines.append(f"{_these(len(build), 'derivation')} will be built:")
        lines.extend(f"  {path}" for path in build)
    if fetch:
        lines.append(f"{_these(len(fetch), 'path')} will be fetched "
                     f"({download / 2**20:.2f} MiB download, {unpacked / 2**20:.2f} MiB "
                     "unpacked):")
        lines.extend(f"  {path}" for path in fetch)
    if unknown:
        lines.append(f"{_these(len(unknown), 'path')} cannot be built or fetched:")
        lines.extend(f"  {path}" for path in unknown)
    return "\n".join(lines) or "nothing to build: every output is valid"


def failure_exit_code(message: str) -> int:
    """100-104 from a daemon's build error, as `exit_code` gives for a local build."""
    from runner.build.result import Status, exit_code

    statuses = []
    for value in _RUNNER_CLASS.findall(message):
        try:
            statuses.append(Status(value))
        except ValueError:
            statuses.append(Status.FAILED)
    if not statuses:  # Nix's wording
        lowered = message.lower()
        if "timed out" in lowered:
            statuses.append(Status.TIMED_OUT)
        elif "hash mismatch" in lowered:
            statuses.append(Status.HASH_MISMATCH)
        elif "not deterministic" in lowered:
            statuses.append(Status.NOT_DETERMINISTIC)
        else:
            statuses.append(Status.FAILED)
    return exit_code(statuses) or 100


def _print_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
