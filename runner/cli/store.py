"""`runner store …`: add files, dump NARs, path metadata, cached failures and maintenance."""

from __future__ import annotations

import argparse
import os
import sys

from runner.cli.args import store_flag
from runner.cli.build import register_failed, register_flaky
from runner.cli.maintenance import register_store
from runner.cli.path_info import report_path_info
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.local_store import open_store


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
