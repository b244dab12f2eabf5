"""Outputs of a finished action, written from the CAS to their store paths."""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from runner.errors import RunnerError
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from runner.remote.cas import Cas
from runner.remote.digests import Key, checked_key, key_of
from runner.store.canonicalise import remove_tree

# Files up to this size are fetched in batches; larger ones streamed to disk.
BATCH_FILE_BYTES = 256 * 1024
# Output Tree messages are held in memory; gRPC refuses messages above 64 MiB anyway.
MAX_TREE_BYTES = 64 * 1024 * 1024
# Entries in one action's outputs (a Tree can name a directory many times over).
MAX_TREE_ENTRIES = 1_000_000


@dataclass(frozen=True)
class _File:
    key: Key
    executable: bool


def has_outputs(result: re_pb2.ActionResult, outputs: Mapping[str, str]) -> bool:
    present = {f.path for f in result.output_files}
    present.update(d.path for d in result.output_directories)
    present.update(s.path for s in result.output_symlinks)
    present.update(s.path for s in result.output_file_symlinks)
    present.update(s.path for s in result.output_directory_symlinks)
    return set(outputs) <= present


def materialise(cas: Cas, result: re_pb2.ActionResult, outputs: Mapping[str, str],
                store_dir: str) -> None:
    """Write every output the action produced to its store path.

    Each output is assembled in a temporary directory inside the store and
    renamed into place, so a crash leaves no half-written output path; an
    output the action did not produce is simply absent (the caller's output
    check reports it). The caller holds the output locks. Whatever the server
    sends is checked first: digests, output trees (well-formed, every name a
    single path component, no name twice, bounded in size), so a malformed
    answer is a RunnerError(reason="remote-error") and nothing is written
    outside the temporary directory.
    """
    plan = _Plan()
    for out in result.output_files:
        if out.path in outputs:
            plan.add_file(_name(outputs[out.path]),
                          _File(checked_key(out.digest, out.path), out.is_executable))
    for group in (result.output_symlinks, result.output_file_symlinks,
                  result.output_directory_symlinks):
        for s in group:
            if s.path in outputs:
                plan.add_link(_name(outputs[s.path]), s.target)
    trees = {_name(outputs[d.path]): checked_key(d.tree_digest, d.path)
             for d in result.output_directories if d.path in outputs}
    for top, tree_key in trees.items():
        if tree_key[1] > MAX_TREE_BYTES:
            raise RunnerError(f"output tree of '{top}' is too large ({tree_key[1]} bytes)",
                              reason="remote-error")
    tree_data = cas.read(set(trees.values()))
    for top, tree_key in trees.items():
        try:
            tree = re_pb2.Tree.FromString(tree_data[tree_key])
        except DecodeError:
            raise RunnerError(f"remote executor sent a malformed output tree for '{top}'",
                              reason="remote-error") from None
        _plan_tree(tree, top, plan)
    try:
        _write(cas, plan, store_dir)
    except OSError as e:
        raise RunnerError(f"cannot write the outputs of a remote action: {e}",
                          reason="remote-error") from None


class _Plan:
    """What to write, relative to the temporary directory; each name claimed once."""

    def __init__(self) -> None:
        self.files: dict[str, _File] = {}
        self.dirs: list[str] = []
        self.links: dict[str, str] = {}
        self._claimed: set[str] = set()

    def _claim(self, rel: str) -> None:
        if rel in self._claimed:
            raise RunnerError(f"remote output '{rel}' is listed twice", reason="remote-error")
        if len(self._claimed) >= MAX_TREE_ENTRIES:
            raise RunnerError(f"remote outputs have more than {MAX_TREE_ENTRIES} entries",
                              reason="remote-error")
        self._claimed.add(rel)

    def add_file(self, rel: str, f: _File) -> None:
        self._claim(rel)
        self.files[rel] = f

    def add_dir(self, rel: str) -> None:
        self._claim(rel)
        self.dirs.append(rel)

    def add_link(self, rel: str, target: str) -> None:
        if not target or "\0" in target:
            raise RunnerError(f"remote output '{rel}' is a symlink to {target!r}",
                              reason="remote-error")
        self._claim(rel)
        self.links[rel] = target


def _write(cas: Cas, plan: _Plan, store_dir: str) -> None:
    with tempfile.TemporaryDirectory(prefix=".tmp-remote-", dir=store_dir) as tmp:
        # Parents come before children (a directory is planned before its entries), and
        # every name is one component claimed once: nothing lands outside `tmp`, and
        # symlinks are made last so that nothing is ever written through one.
        for d in plan.dirs:
            os.mkdir(os.path.join(tmp, d))
        small = {f.key for f in plan.files.values() if f.key[1] <= BATCH_FILE_BYTES}
        contents = cas.read(small)
        for rel, f in plan.files.items():
            dest = os.path.join(tmp, rel)
            with open(dest, "xb") as sink:
                if f.key in contents:
                    sink.write(contents[f.key])
                else:
                    for chunk in cas.read_stream(f.key):
                        sink.write(chunk)
            os.chmod(dest, 0o755 if f.executable else 0o644)
        for rel, target in plan.links.items():
            os.symlink(target, os.path.join(tmp, rel))
        tops = {rel.split("/", 1)[0] for rel in (*plan.files, *plan.dirs, *plan.links)}
        for name in tops:
            dest = os.path.join(store_dir, name)
            if os.path.lexists(dest):  # an invalid leftover: the caller holds its lock
                remove_tree(dest)
            os.rename(os.path.join(tmp, name), dest)


def _name(store_path: str) -> str:
    return os.path.basename(store_path)


def _plan_tree(tree: re_pb2.Tree, top: str, plan: _Plan) -> None:
    """Add an output Directory tree to the plan, breadth first (no recursion: any depth)."""
    children: dict[Key, re_pb2.Directory] = {}
    for child in tree.children:
        children[key_of(child.SerializeToString(deterministic=True))] = child
    queue: deque[tuple[re_pb2.Directory, str]] = deque([(tree.root, top)])
    while queue:
        d, rel = queue.popleft()
        plan.add_dir(rel)
        for f in d.files:
            name = f"{rel}/{_safe(f.name)}"
            plan.add_file(name, _File(checked_key(f.digest, name), f.is_executable))
        for s in d.symlinks:
            plan.add_link(f"{rel}/{_safe(s.name)}", s.target)
        for sub in d.directories:
            name = f"{rel}/{_safe(sub.name)}"
            found = children.get(checked_key(sub.digest, name))
            if found is None:
                raise RunnerError(f"output tree of '{top}' lacks directory "
                                  f"{sub.digest.hash}", reason="remote-error")
            queue.append((found, name))


def _safe(name: str) -> str:
    """A name from the server must stay one path component."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise RunnerError(f"remote output has a bad file name {name!r}", reason="remote-error")
    return name
