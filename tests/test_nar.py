from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.store.canonicalise import remove_at
from runner.store.hashes import Hash
from runner.store.nar import CHUNK, dump, hash_path, restore
from runner.store.references import scan
from tests.deep_trees import flatten, make_chain
from tests.golden import assert_golden


def field(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + bytes(-len(data) % 8)


def nar(*tokens: bytes) -> bytes:
    return b"".join(field(t) for t in tokens)


def make_tree(root: Path, big: int = 3 * CHUNK + 5) -> Path:
    root.mkdir()
    (root / "empty-dir").mkdir()
    (root / "empty-file").write_bytes(b"")
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "ünïcødé ✓.txt").write_text("unicode\n", encoding="utf-8")
    script = root / "bin" / "run"
    script.parent.mkdir()
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "bin" / "link").symlink_to("run")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "B-upper").write_bytes(b"sorted before lowercase")
    (root / "big").write_bytes(bytes(i % 251 for i in range(big)))
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"x" * 9)
    return root


def nar_bytes(path: Path) -> bytes:
    return b"".join(dump(path))


def test_single_file_layout(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    expected = nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"abc", b")")
    assert nar_bytes(f) == expected
    f.chmod(0o755)
    assert nar_bytes(f) == nar(
        b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"contents", b"abc", b")"
    )


def test_symlink_and_directory_layout(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "z").symlink_to("target")
    (d / "a").mkdir()
    assert nar_bytes(d) == nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory", b")", b")",
        b"entry", b"(", b"name", b"z", b"node",
        b"(", b"type", b"symlink", b"target", b"target", b")", b")",
        b")",
    )  # fmt: skip


def test_tree_golden(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", big=1000)
    data = nar_bytes(tree)
    assert_golden("tree.nar", data)
    h, size = hash_path(tree)
    assert size == len(data)
    assert h.digest == hashlib.sha256(data).digest()


def test_chunks_are_bounded(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", big=10 * CHUNK + 3)
    chunks = list(dump(tree))
    assert max(len(c) for c in chunks) <= 2 * CHUNK
    assert len(chunks) > 10


def test_round_trip(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    data = nar_bytes(tree)
    dest = tmp_path / "restored"
    restore(io.BytesIO(data).read, dest)
    assert nar_bytes(dest) == data
    assert os.access(dest / "bin" / "run", os.X_OK)
    assert not os.access(dest / "hello.txt", os.X_OK)
    assert os.readlink(dest / "dangling") == "/nonexistent/target"


def test_restore_single_file_and_symlink(tmp_path: Path) -> None:
    restore(io.BytesIO(nar(b"nix-archive-1", b"(", b"type", b"regular",
                           b"contents", b"data", b")")).read, tmp_path / "f")  # fmt: skip
    assert (tmp_path / "f").read_bytes() == b"data"
    restore(io.BytesIO(nar(b"nix-archive-1", b"(", b"type", b"symlink",
                           b"target", b"f", b")")).read, tmp_path / "l")  # fmt: skip
    assert os.readlink(tmp_path / "l") == "f"


def test_restore_with_short_reads(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    data = nar_bytes(tree)
    stream = io.BytesIO(data)

    def dribble(n: int) -> bytes:
        return stream.read(min(n, 3))

    restore(dribble, tmp_path / "out")
    assert nar_bytes(tmp_path / "out") == data


def entry(name: bytes, *node: bytes) -> tuple[bytes, ...]:
    return (b"entry", b"(", b"name", name, b"node", *node, b")")


FILE = (b"(", b"type", b"regular", b"contents", b"x", b")")


def directory(*entries: tuple[bytes, ...]) -> bytes:
    flat = [t for e in entries for t in e]
    return nar(b"nix-archive-1", b"(", b"type", b"directory", *flat, b")")


GOOD_FILE = nar(b"nix-archive-1", *FILE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        nar(b"nix-archive-2", *FILE),
        GOOD_FILE[:-1],
        GOOD_FILE[:-8],
        nar(b"nix-archive-1", b"(", b"type", b"fifo", b")"),
        nar(b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"x", b"contents"),
        nar(b"nix-archive-1", b"(", b"type", b"regular", b")"),
        nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"", b")"),
        nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"a\0b", b")"),
        directory(entry(b"..", *FILE)),
        directory(entry(b".", *FILE)),
        directory(entry(b"", *FILE)),
        directory(entry(b"a/b", *FILE)),
        directory(entry(b"b", *FILE), entry(b"a", *FILE)),
        directory(entry(b"a", *FILE), entry(b"a", *FILE)),
        directory(entry(b"a", *FILE))[:-16],
        nar(b"nix-archive-1", b"(", b"type", b"directory", b"entri"),
        field(b"nix-archive-1") + struct.pack("<Q", 2**62),
        # non-zero padding after "nix-archive-1"
        struct.pack("<Q", 13) + b"nix-archive-1" + b"\0\0\1" + nar(*FILE),
    ],
)
def test_restore_rejects_malformed(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(RunnerError) as info:
        restore(io.BytesIO(data).read, tmp_path / "out")
    assert info.value.reason == "bad-nar"


def test_restore_every_truncation(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"abc")
    (tree / "l").symlink_to("f")
    data = nar_bytes(tree)
    for cut in range(0, len(data), 8):
        with pytest.raises(RunnerError) as info:
            restore(io.BytesIO(data[:cut]).read, tmp_path / f"out{cut}")
        assert info.value.reason == "bad-nar"


def test_restore_refuses_existing_dest(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"mine")
    with pytest.raises(RunnerError) as info:
        restore(io.BytesIO(GOOD_FILE).read, tmp_path / "f")
    assert info.value.reason == "io"
    assert (tmp_path / "f").read_bytes() == b"mine"  # not "cleaned up": restore did not make it
    (tmp_path / "d").mkdir()
    with pytest.raises(RunnerError) as info:
        restore(io.BytesIO(chain_nar(2)).read, tmp_path / "d")
    assert info.value.reason == "io" and (tmp_path / "d").is_dir()


def test_dump_rejects_special_files_and_missing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(RunnerError) as info:
        list(dump(tmp_path))
    assert info.value.reason == "bad-path"
    with pytest.raises(RunnerError) as info:
        list(dump(tmp_path / "missing"))
    assert info.value.reason == "io"


def test_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    path = tmp_path / "deep"
    make_chain(path, 1500)
    try:
        data = nar_bytes(path)
        restore(io.BytesIO(data).read, tmp_path / "copy")
        assert nar_bytes(tmp_path / "copy") == data
    finally:
        for top in (path, tmp_path / "copy"):
            flatten(top, tmp_path)


def test_hash_path_other_algorithms(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", big=10)
    data = nar_bytes(tree)
    for algo in ("md5", "sha1", "sha512"):
        h, size = hash_path(tree, algo)
        assert (h.algo, h.digest, size) == (algo, hashlib.new(algo, data).digest(), len(data))
    with pytest.raises(RunnerError) as info:
        hash_path(tree, "sha3")
    assert info.value.reason == "bad-hash"


def test_exclude_leaves_entries_out_as_if_they_were_not_there(tmp_path: Path) -> None:
    full, trimmed = tmp_path / "full", tmp_path / "trimmed"
    for root in (full, trimmed):
        (root / "keep" / "sub").mkdir(parents=True)
        (root / "keep" / "sub" / "f").write_text("f")
        (root / "a.py").write_text("a")
    (full / "a.pyc").write_text("compiled")
    (full / "__pycache__").mkdir()
    (full / "__pycache__" / "x").write_text("x")
    seen: list[str] = []

    def exclude(rel: str) -> bool:
        seen.append(rel)
        return rel.endswith(".pyc") or rel == "__pycache__/"

    assert hash_path(full, exclude=exclude) == hash_path(trimmed)
    assert "__pycache__/" in seen and "keep/sub/" in seen and "keep/sub/f" in seen


def chain_nar(depth: int, leaf: bytes = b"leaf", name: bytes = b"d") -> bytes:
    """The NAR of `d/d/…/d/f` (`depth` directories under the root) without touching disk."""
    down = nar(b"(", b"type", b"directory", b"entry", b"(", b"name", name, b"node")
    inner = nar(b"(", b"type", b"directory", b"entry", b"(", b"name", b"f", b"node",
                b"(", b"type", b"regular", b"contents", leaf, b")", b")", b")")
    return field(b"nix-archive-1") + down * depth + inner + nar(b")", b")") * depth


def _remove(path: Path) -> None:
    """Delete a tree past PATH_MAX (pytest's clean-up goes by name and would fail)."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, path.name)
    finally:
        os.close(fd)


def test_tree_past_path_max_restores_and_dumps(tmp_path: Path) -> None:
    data = chain_nar(40, name=b"n" * 200)  # 8,000+ bytes of path: past PATH_MAX
    dest = tmp_path / "copy"
    try:
        restore(io.BytesIO(data).read, dest)
        assert nar_bytes(dest) == data
        assert hash_path(dest) == (Hash("sha256", hashlib.sha256(data).digest()), len(data))
        assert scan(dest, ["leaf" * 8]) == set()
    finally:
        _remove(dest)
    assert not dest.exists()


def test_restore_refuses_a_path_past_max_rel_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as info:
        restore(io.BytesIO(chain_nar(1500)).read, tmp_path / "copy", max_rel=2000)
    assert info.value.reason == "path-too-long"
    assert not (tmp_path / "copy").exists()
    restore(io.BytesIO(chain_nar(100)).read, tmp_path / "ok", max_rel=2000)  # control
    assert (tmp_path / "ok" / ("d/" * 100) / "f").read_bytes() == b"leaf"


def test_failed_restore_removes_its_partial_tree(tmp_path: Path) -> None:
    data = chain_nar(1100)  # deeper than the recursion limit
    for cut in (len(data) - 8,):  # every directory made, then the end is missing
        with pytest.raises(RunnerError) as info:
            restore(io.BytesIO(data[:cut]).read, tmp_path / "copy")
        assert info.value.reason == "bad-nar"
        assert not (tmp_path / "copy").exists()
