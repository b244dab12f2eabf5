"""`result` symlinks to built outputs, each registered as an indirect GC root."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runner.store.roots import add_perm_root


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
    return [add_perm_root(store_dir, state_dir, target, link)
            for link, target in link_names(base, outputs)]
