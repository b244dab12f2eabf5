"""Local inputs: their `exclude` filter, and their store paths computed without copying.

`runner validate` must not write to the store, yet the `.drv` paths depend
on each input's NAR hash, so the NAR is streamed into SHA-256 here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

import pathspec

from runner.errors import RunnerError
from runner.spec.model import InputEntry
from runner.store.paths import make_source_path

Exclude = Callable[[str], bool]
_CHUNK = 1 << 16


def exclude_filter(entry: InputEntry) -> Exclude | None:
    """`exclude(relpath)` for the store's `add_path`: dirs end in `/`, as gitignore expects."""
    if not entry.exclude:
        return None
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
    sha = hashlib.sha256()
    try:
        _Nar(sha.update, exclude).dump(path)
    except OSError as e:
        raise RunnerError(f"cannot read input '{path}': {e.strerror}", reason="input") from None
    return sha.digest()


class _Nar:
    def __init__(self, write: Callable[[bytes], None], exclude: Exclude | None) -> None:
        self.write = write
        self.exclude = exclude

    def string(self, data: bytes) -> None:
        self.write(len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8))

    def dump(self, path: str) -> None:
        self.string(b"nix-archive-1")
        self.node(path, "")

    def node(self, path: str, rel: str) -> None:
        st = os.lstat(path)
        self.string(b"(")
        if stat.S_ISLNK(st.st_mode):
            for item in (b"type", b"symlink", b"target", os.fsencode(os.readlink(path))):
                self.string(item)
        elif stat.S_ISREG(st.st_mode):
            self.string(b"type")
            self.string(b"regular")
            if st.st_mode & stat.S_IXUSR:
                self.string(b"executable")
                self.string(b"")
            self.string(b"contents")
            self.contents(path, st.st_size)
        elif stat.S_ISDIR(st.st_mode):
            self.string(b"type")
            self.string(b"directory")
            names = sorted(os.listdir(path), key=os.fsencode)
            for name in names:
                child = os.path.join(path, name)
                child_rel = rel + name
                if os.path.isdir(child) and not os.path.islink(child):
                    child_rel += "/"
                if self.exclude is not None and self.exclude(child_rel):
                    continue
                for item in (b"entry", b"(", b"name", os.fsencode(name), b"node"):
                    self.string(item)
                self.node(child, child_rel)
                self.string(b")")
        else:
            raise RunnerError(f"input '{path}' is not a file, directory or symlink",
                              reason="input")
        self.string(b")")

    def contents(self, path: str, size: int) -> None:
        self.write(size.to_bytes(8, "little"))
        done = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                done += len(chunk)
                self.write(chunk)
        if done != size:
            raise RunnerError(f"input '{path}' changed while it was being read", reason="input")
        self.write(b"\0" * (-size % 8))
