"""Local inputs: their `exclude` filter, and their store paths computed without copying.

`runner validate` must not write to the store, yet the `.drv` paths depend
on each input's NAR hash, so the NAR is streamed into SHA-256 here.
"""

from __future__ import annotations

from runner.errors import RunnerError
from runner.spec.model import InputEntry
from runner.store import nar
from runner.store.nar import Exclude as Exclude  # re-exported for spec modules
from runner.store.paths import make_source_path


def exclude_filter(entry: InputEntry) -> Exclude | None:
    """`exclude(relpath)` for the store's `add_path`: dirs end in `/`, as gitignore expects."""
    if not entry.exclude:
        return None
    import pathspec  # ~30 ms (it imports asyncio): only for inputs with `exclude:`

    spec = pathspec.GitIgnoreSpec.from_lines(entry.exclude)

    def excluded(relpath: str) -> bool:
        return bool(spec.match_file(relpath))

    return excluded


def source_path(entry: InputEntry, store_dir: str) -> str:
    """The `source` store path `entry` would get when added, without adding it."""
    if entry.git is not None:
        from runner.spec import git_input  # it imports this module

        return git_input.source_path(entry, store_dir)
    digest = nar_sha256(str(entry.path), exclude_filter(entry))
    return make_source_path(entry.name, digest, store_dir)


def nar_sha256(path: str, exclude: Exclude | None = None) -> bytes:
    """SHA-256 of the NAR serialisation of `path`, leaving out excluded entries."""
    try:
        return nar.hash_path(path, exclude=exclude)[0].digest
    except RunnerError as e:
        raise RunnerError(f"cannot read input '{path}': {e.message}", reason="input") from None
