"""File trees as REAPI Merkle trees: Directory messages addressed by their digests.

A store path is immutable once valid, so its tree is computed once per
executor and reused for every action whose input closure holds it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from runner.errors import RunnerError
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from runner.remote.digests import Blob, Key, digest, key_of_file, message_blob


@dataclass(frozen=True)
class Node:
    """What a name in a Directory points at."""

    kind: Literal["file", "dir", "symlink"]
    key: Key = ("", 0)  # file contents or Directory message
    executable: bool = False
    target: str = ""  # symlinks


@dataclass(frozen=True)
class Tree:
    node: Node
    blobs: Mapping[Key, Blob]  # every blob below (and including) the node


def _name(raw: str, where: str) -> str:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise RunnerError(f"'{where}' has a name that is not UTF-8, which the Remote "
                          "Execution API cannot carry", reason="remote-unsupported") from None
    return raw


def path_tree(path: str) -> Tree:
    """The Merkle tree of a file, symlink or directory on disk."""
    blobs: dict[Key, Blob] = {}
    return Tree(_walk(path, blobs), blobs)


def _leaf(path: str, blobs: dict[Key, Blob]) -> Node | None:
    """The node of a file or symlink; None for a directory (its entries come first)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return Node("symlink", target=_name(os.readlink(path), path))
    if stat.S_ISREG(st.st_mode):
        k = key_of_file(path)
        blobs.setdefault(k, Blob(k, path=path))
        return Node("file", k, executable=bool(st.st_mode & stat.S_IXUSR))
    if not stat.S_ISDIR(st.st_mode):
        raise RunnerError(f"'{path}' is not a file, directory or symlink",
                          reason="bad-file-type")
    return None


def _walk(root: str, blobs: dict[Key, Blob]) -> Node:
    """Post-order over the tree with an explicit stack: any depth, no recursion."""
    node = _leaf(root, blobs)
    if node is not None:
        return node
    # Open directories: (path, name in its parent, entries so far, names still to visit).
    stack: list[tuple[str, str, dict[str, Node], Iterator[str]]] = [
        (root, "", {}, iter(os.listdir(root)))]
    while True:
        path, name, entries, todo = stack[-1]
        child = next(todo, None)
        if child is None:
            stack.pop()
            node = _directory(entries, blobs)
            if not stack:
                return node
            stack[-1][2][name] = node
            continue
        child_path = os.path.join(path, child)
        child_name = _name(child, path)
        leaf = _leaf(child_path, blobs)
        if leaf is None:
            stack.append((child_path, child_name, {}, iter(os.listdir(child_path))))
        else:
            entries[child_name] = leaf


def _directory(entries: Mapping[str, Node], blobs: dict[Key, Blob]) -> Node:
    d = re_pb2.Directory()
    for name in sorted(entries):  # REAPI wants each list sorted by name
        node = entries[name]
        if node.kind == "file":
            d.files.add(name=name, digest=digest(node.key), is_executable=node.executable)
        elif node.kind == "dir":
            d.directories.add(name=name, digest=digest(node.key))
        else:
            d.symlinks.add(name=name, target=node.target)
    blob = message_blob(d)
    blobs.setdefault(blob.key, blob)
    return Node("dir", blob.key)


@dataclass
class _Dir:
    children: dict[str, _Dir | Node] = field(default_factory=dict)


class RootBuilder:
    """Assembles an input root from whole trees placed at absolute paths."""

    def __init__(self) -> None:
        self._root = _Dir()
        self.blobs: dict[Key, Blob] = {}

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = [p for p in path.split("/") if p]
        here = self._root
        for part in parts[:-1]:
            child = here.children.setdefault(part, _Dir())
            if not isinstance(child, _Dir):
                raise RunnerError(f"input root: '{path}' is below a file",
                                  reason="remote-unsupported")
            here = child
        return here, parts[-1]

    def add_dir(self, path: str) -> None:
        parent, name = self._parent(path)
        parent.children.setdefault(name, _Dir())

    def add_tree(self, path: str, tree: Tree) -> None:
        parent, name = self._parent(path)
        parent.children[name] = tree.node
        self.blobs.update(tree.blobs)

    def add_text(self, path: str, text: str, executable: bool = False) -> None:
        blob = Blob.of(text.encode())
        self.blobs.setdefault(blob.key, blob)
        parent, name = self._parent(path)
        parent.children[name] = Node("file", blob.key, executable=executable)

    def build(self) -> Key:
        """The root Directory's digest; `blobs` then holds everything below it."""
        return self._finish(self._root).key

    def _finish(self, d: _Dir) -> Node:
        entries = {name: child if isinstance(child, Node) else self._finish(child)
                   for name, child in d.children.items()}
        return _directory(entries, self.blobs)
