"""Outputs of a finished action, written from the CAS to their store paths."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from runner.remote.cas import Cas
from runner.remote.digests import Key, key, key_of
from runner.store.canonicalise import remove_tree

# Files up to this size are fetched in batches; larger ones streamed to disk.
BATCH_FILE_BYTES = 256 * 1024


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
    check reports it). The caller holds the output locks.
    """
    files: dict[str, _File] = {}  # relative to the temp dir
    dirs: list[str] = []
    links: dict[str, str] = {}
    for out in result.output_files:
        if out.path in outputs:
            files[_name(outputs[out.path])] = _File(key(out.digest), out.is_executable)
    for group in (result.output_symlinks, result.output_file_symlinks,
                  result.output_directory_symlinks):
        for s in group:
            if s.path in outputs:
                links[_name(outputs[s.path])] = s.target
    trees = {_name(outputs[d.path]): key(d.tree_digest)
             for d in result.output_directories if d.path in outputs}
    tree_data = cas.read(set(trees.values()))
    for top, tree_key in trees.items():
        tree = re_pb2.Tree.FromString(tree_data[tree_key])
        _plan_tree(tree, top, files, dirs, links)

    with tempfile.TemporaryDirectory(prefix=".tmp-remote-", dir=store_dir) as tmp:
        for d in sorted(dirs):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        small = {f.key for f in files.values() if f.key[1] <= BATCH_FILE_BYTES}
        contents = cas.read(small)
        for rel, f in files.items():
            dest = os.path.join(tmp, rel)
            with open(dest, "wb") as sink:
                if f.key in contents:
                    sink.write(contents[f.key])
                else:
                    for chunk in cas.read_stream(f.key):
                        sink.write(chunk)
            os.chmod(dest, 0o755 if f.executable else 0o644)
        for rel, target in links.items():
            os.symlink(target, os.path.join(tmp, rel))
        for name in {rel.split("/", 1)[0] for rel in (*files, *dirs, *links)}:
            dest = os.path.join(store_dir, name)
            if os.path.lexists(dest):  # an invalid leftover: the caller holds its lock
                remove_tree(dest)
            os.rename(os.path.join(tmp, name), dest)


def _name(store_path: str) -> str:
    return os.path.basename(store_path)


def _plan_tree(tree: re_pb2.Tree, top: str, files: dict[str, _File], dirs: list[str],
               links: dict[str, str]) -> None:
    children: dict[Key, re_pb2.Directory] = {}
    for child in tree.children:
        children[key_of(child.SerializeToString(deterministic=True))] = child

    def walk(d: re_pb2.Directory, rel: str, depth: int) -> None:
        if depth > 1000:
            raise RunnerError(f"output tree of '{top}' is too deep", reason="remote-error")
        dirs.append(rel)
        for f in d.files:
            files[f"{rel}/{_safe(f.name)}"] = _File(key(f.digest), f.is_executable)
        for s in d.symlinks:
            links[f"{rel}/{_safe(s.name)}"] = s.target
        for sub in d.directories:
            child = children.get(key(sub.digest))
            if child is None:
                raise RunnerError(f"output tree of '{top}' lacks directory "
                                  f"{sub.digest.hash}", reason="remote-error")
            walk(child, f"{rel}/{_safe(sub.name)}", depth + 1)

    walk(tree.root, top, 0)


def _safe(name: str) -> str:
    """A name from the server must stay one path component."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise RunnerError(f"remote output has a bad file name {name!r}", reason="remote-error")
    return name
