"""`result` symlinks to built outputs, each registered as an indirect GC root."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from runner.errors import RunnerError
from runner.store.roots import add_perm_root, replace_symlink


def link_names(base: str, outputs: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(link, target) pairs as nix-build names them: `result`, `result-doc`, then
    `result-2`, `result-2-doc`, … for the second requested derivation."""
    pairs = []
    for index, outs in enumerate(outputs):
        prefix = base if index == 0 else f"{base}-{index + 1}"
        for name, path in sorted(outs.items()):
            pairs.append((prefix if name == "out" else f"{prefix}-{name}", path))
    return pairs


def create_out_links(store_dir: str, state_dir: str, base: str,
                     outputs: Sequence[Mapping[str, str]]) -> list[str]:
    """Make every link, or none: a file or directory in the way of any link is refused
    before one is made. Any existing symlink is replaced, as nix-build does, also one
    into another store (`/nix/store/…` left by Nix) or a dangling one."""
    pairs = link_names(base, outputs)
    refuse_non_links(pairs)
    made = []
    for link, target in pairs:
        if os.path.islink(link):
            point_link(link, target)  # so that the store's check sees a link into the store
        made.append(add_perm_root(store_dir, state_dir, target, link))
    return made


def refuse_non_links(pairs: Sequence[tuple[str, str]]) -> None:
    """Before any link is made: only a symlink may be replaced, never a file or directory."""
    for link, _ in pairs:
        if os.path.lexists(link) and not os.path.islink(link):
            what = "directory" if os.path.isdir(link) else "file"
            raise RunnerError(f"cannot create out-link '{link}': a {what} of that name exists "
                              "and is not a symlink (remove it, or pick another name with -o)",
                              reason="bad-root")


def point_link(link: str, target: str) -> None:
    """Make the symlink `link` point at `target` in one step (an old one is never absent)."""
    replace_symlink(target, link, "out-link", make_parent=False)
