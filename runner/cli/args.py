"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.settings import lookup

if TYPE_CHECKING:
    from runner.store.local_store import LocalStore


def store_path_arg(store: LocalStore, arg: str) -> str:
    """The store path `arg` names, following symlinks (e.g. `result`) into the store."""
    from runner.store.paths import is_in_store, to_store_path  # hashlib: not at start-up

    path = os.path.abspath(arg)
    if not is_in_store(path, store.store_dir):
        path = os.path.realpath(path)
    if not is_in_store(path, store.store_dir):
        raise RunnerError(f"path '{arg}' is not in the store '{store.store_dir}'",
                          reason="bad-path")
    return to_store_path(path, store.store_dir)


def setting_arg(name: str) -> Callable[[str], Any]:
    """An argparse `type` that parses a dedicated flag exactly as the setting `name`."""
    setting = lookup(name)

    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except RunnerError as e:
            raise argparse.ArgumentTypeError(e.message) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


FLAG_PREFIX = "setting:"  # as runner.cli.main: flags store typed values under this dest

_METAVARS = {"int": "N", "str": "VALUE", "path": "PATH", "list": "VALUES"}


def setting_flag(parser: argparse._ActionsContainer, *flags: str, name: str,
                 const: bool = True, metavar: str | None = None,
                 help: str | None = None) -> argparse.Action:
    """A dedicated flag for the setting `name`, generated from the settings table:
    its type, choices and help come from the setting's declaration, so a flag never
    restates (and never drifts from) the table. A bool setting's flag sets `const`;
    `help` words a flag that sets the opposite of what the setting's doc says."""
    setting = lookup(name)
    text = help or setting.doc.rstrip(".")
    if text[1:2].islower():
        text = text[0].lower() + text[1:]  # flag help starts lower-case, as argparse's own
    text = text.replace("%", "%%") + f" (setting {name}{'' if const else ' = false'})"
    dest = FLAG_PREFIX + name
    if setting.kind == "bool":
        return parser.add_argument(*flags, dest=dest, action="store_const", const=const,
                                   help=text)
    if setting.kind == "enum":
        return parser.add_argument(*flags, dest=dest, choices=setting.choices, help=text)
    return parser.add_argument(*flags, dest=dest, type=setting_arg(name),
                               metavar=metavar or _METAVARS.get(setting.kind, "VALUE"),
                               help=text)


def store_flag(parser: argparse._ActionsContainer) -> argparse.Action:
    """`--store local|daemon|unix://PATH|auto` on a command that can use a daemon."""
    return setting_flag(parser, "--store", name="store", metavar="STORE",
                        help="the store to use: local, daemon (runner daemon's default "
                             "socket), unix://PATH (a daemon's socket) or auto")
