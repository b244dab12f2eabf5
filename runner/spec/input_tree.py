"""A local input's tree as the store sees it: its `exclude` filter and its NAR hash.

Below both `inputs.py` (plain directories) and `git_input.py` (git-tracked files),
which each use them.
"""

from __future__ import annotations

from runner.errors import RunnerError
from runner.spec.model import InputEntry
from runner.store import nar
from runner.store.nar import Exclude as Exclude  # re-exported for spec modules


def exclude_filter(entry: InputEntry) -> Exclude | None:
    """`exclude(relpath)` for the store's `add_path`: dirs end in `/`, as gitignore expects."""
    if not entry.exclude:
        return None
    import pathspec  # ~30 ms (it imports asyncio): only for inputs with `exclude:`

    spec = pathspec.GitIgnoreSpec.from_lines(entry.exclude)

    def excluded(relpath: str) -> bool:
        return bool(spec.match_file(relpath))

    return excluded


def nar_sha256(path: str, exclude: Exclude | None = None) -> bytes:
    """SHA-256 of the NAR serialisation of `path`, leaving out excluded entries."""
    try:
        return nar.hash_path(path, exclude=exclude)[0].digest
    except RunnerError as e:
        raise RunnerError(f"cannot read input '{path}': {e.message}", reason="input") from None
