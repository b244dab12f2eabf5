"""Remembering what a spec instantiated to, so an unchanged spec is not parsed again.

`runner build` of a spec whose outputs are all valid should cost a `stat` per spec
file and one query, not a YAML parse, a schema check and a translation. An entry
lives in `<state-dir>/eval-cache/<key>.json` and is keyed by everything translation
reads besides the files: the spec path, the names asked for, the store dir, the host
system (the default `system`), runner's version and this format's `VERSION`. The
entry records every spec file read (imports too) with the SHA-256 of the bytes the
loader parsed and the file's `stat` taken before reading it, plus the resulting
`.drv` and output paths.

A file counts as unchanged when its `stat` (size, mtime, ctime, inode, device) is
the recorded one and that `stat` was *settled* when recorded (ctime more than
`SETTLE_NS` before the entry was written: any later write moves ctime past it,
and ctime cannot be set back by `touch`); otherwise its bytes are hashed and
compared. Specs with local or git inputs are never cached (their trees would need
checking too). The entry only answers "which paths"; validity is always asked of
the store. Deleting the directory is always safe (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from collections.abc import Sequence
from typing import NamedTuple

from runner import __version__
from runner.spec.host import host_system

VERSION = 2
CACHE_DIR = "eval-cache"
# A stat younger than this when recorded is not trusted alone: a write within the
# same timestamp tick would leave it unchanged.
SETTLE_NS = 2_000_000_000

Stat = list[int]  # size, mtime_ns, ctime_ns, inode, device


class Fingerprint(NamedTuple):
    """A spec file as the loader read it: the `stat` taken before the read (None if it
    failed) and the SHA-256 of the bytes parsed."""
    path: str
    stat: Stat | None
    sha256: str


class Entry(NamedTuple):
    drv_paths: list[str]  # the requested derivations' .drv files
    targets: list[tuple[str, dict[str, str]]]  # (drv path, outputs), in the order asked

    @property
    def paths(self) -> list[str]:
        return [*self.drv_paths, *(p for _, outs in self.targets for p in outs.values())]


def _key(store_dir: str, spec_path: str, names: Sequence[str]) -> str:
    return json.dumps([VERSION, __version__, os.path.abspath(store_dir),
                       os.path.abspath(spec_path), list(names), host_system()])


def _file(state_dir: str, key: str) -> str:
    # crc32 only names the file; the whole key is stored and compared.
    return os.path.join(state_dir, CACHE_DIR, f"{zlib.crc32(key.encode()):08x}.json")


def stat_of(path: str) -> Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file(path: str) -> str | None:
    import hashlib  # only when a stat does not settle it

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def lookup(state_dir: str, store_dir: str, spec_path: str, names: Sequence[str]
           ) -> Entry | None:
    """The entry for this spec if none of its files changed since it was written."""
    key = _key(store_dir, spec_path, names)
    path = _file(state_dir, key)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data["key"] != key:
            return None
        files = [(str(p), s, bool(settled), str(h)) for p, s, settled, h in data["files"]]
        entry = Entry(list(data["drvs"]), [(t[0], dict(t[1])) for t in data["targets"]])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent or damaged: the slow path rewrites it
    if not files:
        return None
    hashed = False
    for file, stat, settled, digest in files:
        if settled and stat_of(file) == stat:
            continue
        if sha256_file(file) != digest:
            return None
        hashed = True
    if hashed:  # unchanged but had to be read: record the stats as they are now
        _write(path, key, [Fingerprint(p, stat_of(p), h) for p, _, _, h in files], entry)
    return entry


def record(state_dir: str, store_dir: str, spec_path: str, names: Sequence[str],
           files: Sequence[Fingerprint], entry: Entry) -> None:
    """Write the entry for a spec just instantiated from the files `files` describe."""
    if not files or any(f.stat is None for f in files):
        return
    key = _key(store_dir, spec_path, names)
    _write(_file(state_dir, key), key, files, entry)


def _write(path: str, key: str, files: Sequence[Fingerprint], entry: Entry) -> None:
    now = time.time_ns()
    rows = [[f.path, f.stat, f.stat is not None and f.stat[2] < now - SETTLE_NS, f.sha256]
            for f in files]
    data = {"key": key, "files": rows, "drvs": entry.drv_paths,
            "targets": [list(t) for t in entry.targets]}
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
