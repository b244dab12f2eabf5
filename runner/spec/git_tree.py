"""The files git tracks under a directory, as (mode, blob id, path) entries.

`index` mode lists the index (what the next commit would hold; during a
pre-commit hook git points GIT_INDEX_FILE at exactly that). `worktree` mode
lists the same tracked paths with their working-tree content: git's own
stat cache (`git diff-files`) says which files changed, and only those are
read and hashed here. Untracked and ignored files are never listed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RunnerError

REGULAR, EXECUTABLE, SYMLINK, GITLINK = "100644", "100755", "120000", "160000"
_ZERO = "0" * 40
# Variables git sets for hooks that may be relative to the hook's cwd, while we run
# git from the input's directory.
_PATH_VARS = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_COMMON_DIR")


@dataclass(frozen=True)
class Entry:
    mode: str  # one of REGULAR, EXECUTABLE, SYMLINK, GITLINK
    blob: str  # hex object id; for worktree changes, the id git would give the file
    path: str  # `/`-separated, relative to the listed directory


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in _PATH_VARS:
        if env.get(name) and not os.path.isabs(env[name]):
            env[name] = os.path.abspath(env[name])
    env["GIT_OPTIONAL_LOCKS"] = "0"  # never write the user's index (no stat refresh)
    return env


def git(cwd: Path, *args: str) -> bytes:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RunnerError("git inputs need the 'git' program, which was not found",
                          reason="git") from None
    except NotADirectoryError:
        raise RunnerError(f"git input '{cwd}' is not a directory", reason="git") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = detail[-1] if detail else f"exit status {proc.returncode}"
        raise RunnerError(f"git {args[0]} in '{cwd}' failed: {why}", reason="git")
    return proc.stdout


def list_entries(directory: Path, mode: str) -> list[Entry]:
    """Tracked files below `directory` (which must be inside a git work tree)."""
    if not directory.is_dir():
        raise RunnerError(f"git input '{directory}' is not a directory", reason="git")
    try:
        inside = git(directory, "rev-parse", "--is-inside-work-tree").strip()
    except RunnerError:
        inside = b"false"
    if inside != b"true":
        raise RunnerError(f"git input '{directory}' is not inside a git work tree",
                          reason="git")
    entries = _index_entries(directory)
    if mode == "worktree":
        entries = _worktree_changes(directory, entries)
    return sorted(entries.values(), key=lambda e: e.path.encode())


def _index_entries(directory: Path) -> dict[str, Entry]:
    out = git(directory, "ls-files", "--stage", "-z", "--", ".")
    entries: dict[str, Entry] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, blob, stage = meta.decode().split(" ")
        path = os.fsdecode(raw_path)
        if stage != "0":
            raise RunnerError(f"git input '{directory}': '{path}' has unresolved merge "
                              "conflicts", reason="git")
        entries[path] = Entry(mode, blob, path)
    return entries


def _worktree_changes(directory: Path, entries: dict[str, Entry]) -> dict[str, Entry]:
    out = git(directory, "diff-files", "--raw", "-z", "--relative", "--", ".")
    fields = out.split(b"\0")
    for meta, raw_path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta:
            continue
        _, new_mode, _, new_blob, status = meta.decode().lstrip(":").split(" ")
        path = os.fsdecode(raw_path)
        if status.startswith("D") or not os.path.lexists(directory / path):
            entries.pop(path, None)
        elif new_mode == GITLINK or path not in entries:
            continue  # submodules are not descended into
        else:
            blob = new_blob if new_blob != _ZERO else None
            entries[path] = _hash_file(directory / path, path, blob)
    return entries


def _hash_file(full: Path, path: str, blob: str | None) -> Entry:
    """The entry git would record for the file on disk (raw bytes, no filters)."""
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        mode, data = SYMLINK, os.fsencode(os.readlink(full))
    elif stat.S_ISREG(st.st_mode):
        mode = EXECUTABLE if st.st_mode & stat.S_IXUSR else REGULAR
        if blob is not None:
            return Entry(mode, blob, path)
        data = full.read_bytes()
    else:
        raise RunnerError(f"git input: '{full}' is not a file or symlink", reason="git")
    sha = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    sha.update(data)
    return Entry(mode, sha.hexdigest(), path)
