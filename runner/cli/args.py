"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.settings import lookup
from runner.store.paths import is_in_store, to_store_path

if TYPE_CHECKING:
    from runner.store.local_store import LocalStore


def store_path_arg(store: LocalStore, arg: str) -> str:
    """The store path `arg` names, following symlinks (e.g. `result`) into the store."""
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
