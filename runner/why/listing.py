"""What a source store path holds, entry by entry (the NAR's listing, with a digest
per file), and how two listings differ."""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
from dataclasses import dataclass

from runner.errors import RunnerError

_CHUNK = 64 * 1024
_MAX_PATCH = 1 << 20  # files larger than this get no unified diff


@dataclass(frozen=True)
class Entry:
    kind: str  # "regular", "directory" or "symlink", as in a NAR
    size: int = 0
    executable: bool = False
    digest: str = ""  # SHA-256 of a file's contents, a symlink's target
    target: str = ""


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the source root; "" is the root itself
    change: str  # "added", "removed", "modified"
    old: Entry | None
    new: Entry | None
    patch: str | None = None

    def describe(self) -> str:
        where = self.path or "."
        old, new = self.old, self.new
        if old is None and new is not None:
            return f"added     {where}{_size(new)}"
        if new is None and old is not None:
            return f"removed   {where}{_size(old)}"
        assert old is not None and new is not None
        if old.kind != new.kind:
            what = f" ({old.kind} → {new.kind})"
        elif old.kind == "symlink":
            what = f" (-> {old.target} → -> {new.target})"
        elif old.executable != new.executable and old.digest == new.digest:
            what = f" ({'now' if new.executable else 'no longer'} executable)"
        else:
            what = f" ({old.size} → {new.size} bytes)"
        return f"modified  {where}{what}"

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"path": self.path, "change": self.change}
        for side, entry in (("old", self.old), ("new", self.new)):
            if entry is not None:
                data[side] = {"type": entry.kind, "size": entry.size,
                              "executable": entry.executable}
        if self.patch is not None:
            data["patch"] = self.patch
        return data


def _size(entry: Entry) -> str:
    if entry.kind == "regular":
        return f" ({entry.size} bytes)"
    return f" ({entry.kind})"


def _digest(path: str) -> str:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
    except OSError as e:
        raise RunnerError(f"cannot read '{path}': {e.strerror}", reason="io") from None
    return hasher.hexdigest()


def listing(root: str) -> dict[str, Entry]:
    """Every entry under `root` by relative path ('/'-separated), walked with a stack."""
    found: dict[str, Entry] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        try:
            st = os.lstat(path)
        except OSError as e:
            raise RunnerError(f"cannot read '{path}': {e.strerror}", reason="io") from None
        if stat.S_ISDIR(st.st_mode):
            found[rel] = Entry("directory")
            try:
                names = os.listdir(path)
            except OSError as e:
                raise RunnerError(f"cannot read '{path}': {e.strerror}", reason="io") from None
            stack.extend(f"{rel}/{n}" if rel else n for n in names)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            found[rel] = Entry("symlink", digest=target, target=target)
        elif stat.S_ISREG(st.st_mode):
            found[rel] = Entry("regular", st.st_size, bool(st.st_mode & stat.S_IXUSR),
                               _digest(path))
        # other types cannot be in a store path; nothing to compare
    return found


def compare(old_root: str, new_root: str, *, patches: bool = False) -> list[FileChange]:
    """Files added, removed and modified from `old_root` to `new_root`, sorted by path;
    directories appear only when added or removed (their files say the rest)."""
    old, new = listing(old_root), listing(new_root)
    changes: list[FileChange] = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is None:
            changes.append(FileChange(path, "added", None, b))
        elif b is None:
            changes.append(FileChange(path, "removed", a, None))
        elif a.kind == b.kind == "directory":
            continue
        else:
            patch = None
            if patches and a.kind == b.kind == "regular":
                patch = _patch(os.path.join(old_root, path) if path else old_root,
                               os.path.join(new_root, path) if path else new_root, path)
            changes.append(FileChange(path, "modified", a, b, patch))
    return changes


def _text(path: str) -> list[str] | None:
    try:
        if os.path.getsize(path) > _MAX_PATCH:
            return None
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _patch(old: str, new: str, rel: str) -> str | None:
    """A unified diff of two text files; None for binary or very large ones."""
    a, b = _text(old), _text(new)
    if a is None or b is None:
        return None
    name = rel or "."
    lines = difflib.unified_diff(a, b, f"a/{name}", f"b/{name}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)
