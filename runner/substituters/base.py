"""What every substituter offers, and what substitution needs from a store.

A substituter answers two questions: what do you know about this path
(`query`, a `NarInfo` or None) and give me its NAR (`fetch`, a reader of
the uncompressed NAR). It does not verify anything: `substitute` checks
signatures, sizes and hashes the same way for every kind, so a buggy or
hostile substituter can only fail, never install something wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from runner.store.path_info import PathInfo
from runner.substituters.narinfo import NarInfo

Read = Callable[[int], bytes]
Warn = Callable[[str], None]


class Substituter(Protocol):
    name: str  # the URL or command line, used in every message about it
    trusted: bool  # the user vouches for it: signatures are not required
    trusted_keys: frozenset[str]  # public keys (`name:base64`) accepted on its paths

    @property
    def priority(self) -> int:
        """Lower is asked first (Nix's `Priority`); may contact the substituter once."""
        ...

    def query(self, path: str) -> NarInfo | None:
        """What the substituter knows about `path`, or None when it does not have it."""
        ...

    def fetch(self, info: NarInfo) -> AbstractContextManager[Read]:
        """A reader of `info.path`'s uncompressed NAR (read(n) is short only at the end)."""
        ...

    def report_down(self, message: str) -> bool:
        """Mark the substituter unusable; True the first time (the caller warns once)."""
        ...

    @property
    def is_down(self) -> bool: ...


class Store(Protocol):
    """The part of `LocalStore` that substitution uses."""

    store_dir: str

    def is_valid(self, path: str) -> bool: ...
    def register_valid_paths(self, infos: list[PathInfo]) -> None: ...


class DownState:
    """Mixin: remembers (thread-safely) that a substituter failed, so it is reported once."""

    def __init__(self) -> None:
        self._down_lock = threading.Lock()
        self._down: str | None = None

    def report_down(self, message: str) -> bool:
        with self._down_lock:
            first = self._down is None
            if first:
                self._down = message
            return first

    @property
    def is_down(self) -> bool:
        return self._down is not None


@dataclass(frozen=True)
class SubstituterDecl:
    """A substituter as declared: a cache URL or a program, with the keys it claims.

    `origin` is "settings" for the user's own configuration, or where a spec
    declared it (`FILE:LINE:COL`); spec-declared keys are only honoured when
    the user trusts them too, and spec-declared programs only run when they
    are in the user's `trusted-substituter-commands`. `priority` overrides
    the cache's own (`nix-cache-info`) when set.
    """

    url: str | None = None
    command: tuple[str, ...] | None = None
    trusted_public_keys: tuple[str, ...] = ()
    origin: str = "settings"
    priority: int | None = None

    @property
    def from_spec(self) -> bool:
        return self.origin != "settings"

    @property
    def label(self) -> str:
        return self.url if self.url is not None else " ".join(self.command or ())
