"""`store path-info`'s report, over the local store or a daemon's (the same queries).

Its own module so that both `cli/store.py` and `daemon/client_cli.py` use it without
importing each other.
"""

from __future__ import annotations

import argparse
import json

from runner.cli.args import store_path_arg
from runner.errors import raise_not_valid
from runner.store.closure_info import closure_size
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo


def report_path_info(args: argparse.Namespace, store: LocalStore) -> int:
    """`store path-info` over any store with LocalStore's queries (a daemon's too)."""
    infos: list[PathInfo | str] = []  # a str: a store path that is not valid
    sizes: dict[str, int] = {}
    for arg in args.paths:
        path = store_path_arg(store, arg)
        found = store.query_path_info(path)
        if found is None and not args.json:
            raise_not_valid(path)
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
