"""`runner store …`: add files, dump NARs, path metadata, cached failures and maintenance."""

from __future__ import annotations

import argparse
import json
import os
import sys

from runner.cli.args import store_flag, store_path_arg
from runner.cli.build import register_failed, register_flaky
from runner.cli.maintenance import register_store
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.closure_info import closure_size
from runner.store.local_store import LocalStore, open_store
from runner.store.path_info import PathInfo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("store", help="work with the store directly")
    actions = group.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    p = actions.add_parser("add", help="copy files or trees into the store (nix-store --add)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or store paths")
    p.set_defaults(func=_add)

    p = actions.add_parser("dump", help="write a path's NAR serialisation to stdout")
    p.add_argument("path", metavar="PATH", help="a store path (or a link to one)")
    p.set_defaults(func=_dump)

    p = actions.add_parser("path-info", help="show NAR hash, size, references and deriver")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or store paths")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("-S", "--closure-size", action="store_true",
                   help="also show the total NAR size of each path's closure")
    store_flag(p)
    p.set_defaults(func=_path_info)

    register_failed(actions)
    register_flaky(actions)
    register_store(actions)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        for path in args.paths:
            print(store.add_path(path))
    return 0


def _dump(args: argparse.Namespace, settings: Settings) -> int:
    if not os.path.lexists(args.path):
        raise RunnerError(f"path '{args.path}' does not exist", reason="not-found")
    out = sys.stdout.buffer
    try:
        for chunk in nar.dump(args.path):
            out.write(chunk)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise RunnerError(f"cannot dump '{args.path}': {e.strerror}", reason="io") from None
    out.flush()
    return 0


def _path_info(args: argparse.Namespace, settings: Settings) -> int:
    from runner.daemon.store_choice import daemon_socket

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        return client_cli.path_info(args, settings, socket_path)
    with open_store(settings) as store:
        return report_path_info(args, store)


def report_path_info(args: argparse.Namespace, store: LocalStore) -> int:
    """`store path-info` over any store with LocalStore's queries (a daemon's too)."""
    infos: list[PathInfo | str] = []  # a str: a store path that is not valid
    sizes: dict[str, int] = {}
    for arg in args.paths:
        path = store_path_arg(store, arg)
        found = store.query_path_info(path)
        if found is None and not args.json:
            raise RunnerError(f"path '{path}' is not valid", reason="invalid-path")
        infos.append(path if found is None else found)
        if args.closure_size and found is not None:
            sizes[path] = closure_size(store, path)
    if args.json:
        # As Nix 2.8: a path that is not valid is listed as such, and is no error.
        entries = [{"path": i, "valid": False} if isinstance(i, str) else i.to_json()
                   for i in infos]
        for entry in entries:
            if args.closure_size and entry.get("valid", True):
                entry["closureSize"] = sizes[str(entry["path"])]
        print(json.dumps(entries, sort_keys=True))
        return 0
    for info in infos:
        assert not isinstance(info, str)  # refused above without --json
        print(info.path)
        print(f"  nar-hash:   {info.nar_hash}")
        print(f"  nar-size:   {info.nar_size}")
        if args.closure_size:
            print(f"  closure:    {sizes[info.path]}")
        print(f"  deriver:    {info.deriver or '-'}")
        print("  references:" + "".join(f"\n    {ref}" for ref in sorted(info.references)))
    return 0
