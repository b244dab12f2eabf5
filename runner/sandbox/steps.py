"""A plan's mount with its host side resolved: what the executor hands the child."""

from __future__ import annotations

from dataclasses import dataclass

from runner.sandbox.plan import Mount


@dataclass(frozen=True)
class Step:
    """A plan mount with its host source resolved (symlinks followed, existence known)."""

    mount: Mount
    source: str  # resolved host path, "" when there is none
    is_dir: bool
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) the bound source must have
    # For the store: each input path's type and name, "d<name>", "f<name>" or
    # "l<name>\0<target>" (a symlink, recreated, not bound).
    inputs: tuple[str, ...] = ()
    stubs_on_disk: bool = False  # the store: skip the overlay (tests of the fallback)
    stubs_made: bool = False  # the store: its stubs are in the staging store already
