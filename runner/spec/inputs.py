"""Local inputs: their store paths computed without copying.

`runner validate` must not write to the store, yet the `.drv` paths depend
on each input's NAR hash, so the NAR is streamed into SHA-256 here.
"""

from __future__ import annotations

from runner.spec import git_input
from runner.spec.input_tree import Exclude as Exclude  # re-exported for spec modules
from runner.spec.input_tree import exclude_filter as exclude_filter
from runner.spec.input_tree import nar_sha256
from runner.spec.model import InputEntry
from runner.store.paths import make_source_path


def source_path(entry: InputEntry, store_dir: str) -> str:
    """The `source` store path `entry` would get when added, without adding it."""
    if entry.git is not None:
        return git_input.source_path(entry, store_dir)
    digest = nar_sha256(str(entry.path), exclude_filter(entry))
    return make_source_path(entry.name, digest, store_dir)
