"""Reference scanning: which of the candidate store hashes occur in a path.

Like Nix, we search the path's NAR serialisation, so file contents, symlink
targets and file names all count. Only runs of 32+ base-32 characters can
hold a hash part, and such runs are rare in real files (the alphabet lacks
e, o, u and t), so one C-speed regex pass finds the few places worth a look.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from runner.store.base32 import ALPHABET
from runner.store.nar import dump
from runner.store.paths import HASH_PART_LEN

_RUN = re.compile(b"[" + ALPHABET.encode() + b"]{%d,}" % HASH_PART_LEN)
_OVERLAP = HASH_PART_LEN - 1


def _search_run(run: bytes, wanted: set[bytes], found: set[bytes]) -> None:
    windows = len(run) - HASH_PART_LEN + 1
    if windows > 4 * len(wanted):
        # Long runs (padding, base-32 blobs): ask for each candidate instead.
        found.update(h for h in wanted if h in run)
        return
    for i in range(windows):
        window = run[i : i + HASH_PART_LEN]
        if window in wanted:
            found.add(window)


def scan(path: str | os.PathLike[str], hash_parts: Iterable[str]) -> set[str]:
    """The subset of `hash_parts` that occurs anywhere in `path`'s tree."""
    wanted = {h.encode() for h in hash_parts if len(h) == HASH_PART_LEN}
    found: set[bytes] = set()
    if not wanted:
        return set()
    tail = b""  # the end of the previous chunk: a hash may straddle chunks
    for chunk in dump(path):
        data = tail + chunk
        for match in _RUN.finditer(data):
            _search_run(match.group(), wanted, found)
        if len(found) == len(wanted):
            break
        tail = data[-_OVERLAP:]
    return {h.decode() for h in found}
