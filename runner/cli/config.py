"""`runner config show|docs`: the effective settings and their documentation."""

from __future__ import annotations

import argparse
import json

from runner.settings import Settings, settings_markdown


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="show settings")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print effective settings and where each came from")
    show.add_argument("--json", action="store_true",
                      help="print {NAME: {value, origin}} as JSON (values typed: "
                           "booleans, numbers, lists)")
    show.set_defaults(func=_show)
    docs = config_sub.add_parser("docs", help="print the settings reference (docs/settings.md)")
    docs.set_defaults(func=_docs)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    if args.json:
        print(json.dumps(settings.to_json(), indent=2))
    else:
        print(settings.show())
    return 0


def _docs(args: argparse.Namespace, settings: Settings) -> int:
    print(settings_markdown(), end="")
    return 0
