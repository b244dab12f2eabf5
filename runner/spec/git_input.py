"""Inputs taken from git (`git: true | index | worktree`): only tracked files.

Hashing is the cost to avoid: a hook runs on every commit, on repos of many
thousand files. The listing (`git ls-files -s`, plus `git diff-files` in
worktree mode) names every file by its git object id, so a digest of the
listing identifies the content. It keys a small cache of NAR hashes under
`$XDG_CACHE_HOME/runner/git-inputs/`: an unchanged input costs one listing
and one lookup; file contents are read only when the listing is new.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from runner.errors import RunnerError
from runner.spec.git_tree import EXECUTABLE, GITLINK, SYMLINK, Entry, git_env, list_entries
from runner.spec.input_tree import Exclude, exclude_filter, nar_sha256
from runner.spec.model import InputEntry
from runner.store.path_info import PathInfo
from runner.store.paths import make_source_path


class SourceStore(Protocol):
    store_dir: str

    def add_path(
        self, src: str, name: str | None = None, exclude: Exclude | None = None
    ) -> str: ...

    def is_valid(self, path: str) -> bool: ...

    def query_path_info(self, path: str) -> PathInfo | None: ...


def source_path(entry: InputEntry, store_dir: str) -> str:
    """The store path of a git input, computed without writing to the store."""
    assert entry.git is not None
    entries = list_entries(entry.path, entry.git)
    key = listing_key(entry, entries)
    digest = _cache_get(key)
    if digest is None:
        with _exported(entry.path, entry.git, entries) as tree:
            digest = nar_sha256(tree, exclude_filter(entry))
        _cache_put(key, digest)
    return make_source_path(entry.name, digest, store_dir)


def add(store: SourceStore, entry: InputEntry) -> str:
    """Add a git input to `store` (a no-op beyond the listing when it is there already)."""
    assert entry.git is not None
    entries = list_entries(entry.path, entry.git)
    key = listing_key(entry, entries)
    digest = _cache_get(key)
    if digest is not None:
        path = make_source_path(entry.name, digest, store.store_dir)
        if store.is_valid(path):
            return path
    with _exported(entry.path, entry.git, entries) as tree:
        path = store.add_path(tree, entry.name, exclude_filter(entry))
    info = store.query_path_info(path)
    if info is not None:
        _cache_put(key, info.nar_hash.digest)
    return path


def listing_key(entry: InputEntry, entries: list[Entry]) -> str:
    """Names the input's content: the listing, the mode and the exclude patterns."""
    sha = hashlib.sha256(b"runner-git-input-1\0")
    sha.update(f"{entry.git}\0".encode())
    for pattern in entry.exclude:
        sha.update(pattern.encode() + b"\0")
    sha.update(b"\0")
    for e in entries:
        sha.update(f"{e.mode} {e.blob} ".encode() + os.fsencode(e.path) + b"\0")
    return sha.hexdigest()


# ---------------------------------------------------------------- the cache

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "runner" / "git-inputs"


def _cache_get(key: str) -> bytes | None:
    try:
        text = (_cache_dir() / key).read_text().strip()
        return bytes.fromhex(text) if len(text) == 64 else None
    except (OSError, ValueError):
        return None  # a missing or damaged entry just means hashing again


def _cache_put(key: str, digest: bytes) -> None:
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(digest.hex() + "\n")
        os.replace(tmp, directory / key)
    except OSError:
        pass  # a read-only cache costs speed, not correctness


# ---------------------------------------------------------------- exporting

@contextmanager
def _exported(directory: Path, mode: str, entries: list[Entry]) -> Iterator[str]:
    """A temporary tree holding exactly `entries`: blobs from git (index mode) or
    files from the working tree (worktree mode)."""
    top = tempfile.mkdtemp(prefix="runner-git-input-")
    try:
        root = os.path.join(top, "src")
        os.mkdir(root)
        if mode == "index":
            _write_blobs(directory, root, entries)
        else:
            _copy_files(directory, root, entries)
        yield root
    except OSError as e:
        raise RunnerError(f"cannot export git input '{directory}': {e}", reason="git") from None
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _place(root: str, entry: Entry, data: bytes) -> None:
    dest = os.path.join(root, *entry.path.split("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if entry.mode == GITLINK:
        os.makedirs(dest, exist_ok=True)  # a submodule shows as an empty directory
    elif entry.mode == SYMLINK:
        os.symlink(data, dest)
    else:
        with open(dest, "wb") as f:
            f.write(data)
        os.chmod(dest, 0o755 if entry.mode == EXECUTABLE else 0o644)


def _copy_files(directory: Path, root: str, entries: list[Entry]) -> None:
    for entry in entries:
        full = directory / entry.path
        if entry.mode == GITLINK:
            _place(root, entry, b"")
        elif entry.mode == SYMLINK:
            _place(root, entry, os.fsencode(os.readlink(full)))
        else:
            _place(root, entry, full.read_bytes())


def _write_blobs(directory: Path, root: str, entries: list[Entry]) -> None:
    """Stream the blobs through one `git cat-file --batch` process."""
    wanted = [e for e in entries if e.mode != GITLINK]
    for entry in entries:
        if entry.mode == GITLINK:
            _place(root, entry, b"")
    if not wanted:
        return
    proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=directory, env=git_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    with proc:
        # A thread writes the ids while we read: writing them all first could fill
        # both pipes and deadlock with git.
        ids = b"".join(e.blob.encode() + b"\n" for e in wanted)
        writer = _Writer(proc.stdin, ids)
        try:
            for entry in wanted:
                header = proc.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise RunnerError(f"git input '{directory}': cannot read object "
                                      f"{entry.blob} for '{entry.path}'", reason="git")
                data = proc.stdout.read(int(header[2]))
                proc.stdout.read(1)  # the newline after each object
                _place(root, entry, data)
        finally:
            writer.join()


class _Writer:
    """Writes `data` to `pipe` in a thread, then closes it."""

    def __init__(self, pipe: IO[bytes], data: bytes) -> None:
        self._thread = threading.Thread(target=self._run, args=(pipe, data), daemon=True)
        self._thread.start()

    @staticmethod
    def _run(pipe: IO[bytes], data: bytes) -> None:
        try:
            pipe.write(data)
            pipe.close()
        except OSError:
            pass  # git died; the reader reports it

    def join(self) -> None:
        self._thread.join()
