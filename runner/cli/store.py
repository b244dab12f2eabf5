"""`runner store …`: add files, dump NARs, show path metadata (`runner failed` clears failures)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.local_store import LocalStore, open_store
from runner.store.paths import is_in_store, to_store_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("store", help="work with the store directly")
    actions = group.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    p = actions.add_parser("add", help="copy files or trees into the store (nix-store --add)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=_add)

    p = actions.add_parser("dump", help="write a path's NAR serialisation to stdout")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_dump)

    p = actions.add_parser("path-info", help="show NAR hash, size, references and deriver")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_path_info)


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
    with open_store(settings) as store:
        infos = []
        for arg in args.paths:
            path = _store_path_of(arg, store)
            info = store.query_path_info(path)
            if info is None:
                raise RunnerError(f"path '{path}' is not valid", reason="invalid-path")
            infos.append(info)
    if args.json:
        print(json.dumps([info.to_json() for info in infos], sort_keys=True))
        return 0
    for info in infos:
        print(info.path)
        print(f"  nar-hash:   {info.nar_hash}")
        print(f"  nar-size:   {info.nar_size}")
        print(f"  deriver:    {info.deriver or '-'}")
        print("  references:" + "".join(f"\n    {ref}" for ref in sorted(info.references)))
    return 0


def _store_path_of(arg: str, store: LocalStore) -> str:
    """The store path named by `arg`, following symlinks (e.g. `result`) into the store."""
    path = os.path.abspath(arg)
    if not is_in_store(path, store.store_dir):
        path = os.path.realpath(path)
    if not is_in_store(path, store.store_dir):
        raise RunnerError(f"path '{arg}' is not in the store '{store.store_dir}'",
                          reason="bad-path")
    return to_store_path(path, store.store_dir)
