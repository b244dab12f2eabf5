"""why-depends (shortest reference chain, files that mention the next hash) and closure size."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store import nar
from runner.store.canonicalise import canonicalise
from runner.store.closure_info import closure_size, find_mentions, shortest_chain
from runner.store.hashes import hash_bytes
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.store.paths import hash_part, make_source_path
from tests.nix_oracle import NixOracle


@pytest.fixture
def store(store_dir: str, state_dir: str) -> Iterator[LocalStore]:
    with LocalStore(store_dir, state_dir) as s:
        yield s


def _text(store: LocalStore, name: str, *refs: str) -> str:
    return store.add_text(name, f"{name} uses {' '.join(refs)}\n", refs)


def _tree_path(store: LocalStore, dep: str) -> str:
    """A directory path whose files mention `dep` deep in a big file and in a symlink."""
    path = make_source_path("tool", hash_bytes("sha256", b"tool").digest, store.store_dir)
    os.makedirs(path + "/bin")
    # The hash lands across the 64 KiB read boundary.
    Path(path, "bin", "run").write_bytes(b"x" * 65530 + hash_part(dep).encode() + b"-dep/sh\n")
    Path(path, "README").write_text("no references here\n")
    os.symlink(dep + "/lib", path + "/lib")
    canonicalise(path)
    nar_hash, nar_size = nar.hash_path(path)
    store.register_valid_paths([PathInfo(path, nar_hash, nar_size, frozenset([dep]))])
    return path


def test_shortest_chain_prefers_fewer_hops(store: LocalStore) -> None:
    d = _text(store, "d")
    y = _text(store, "y", d)
    x = _text(store, "x", y)
    b = _text(store, "b", d)
    a = _text(store, "a", x, b)
    assert shortest_chain(store, a, d) == [a, b, d]
    assert shortest_chain(store, a, a) == [a]
    assert shortest_chain(store, d, a) is None


def test_mentions_in_files_and_symlinks(store: LocalStore) -> None:
    dep = _text(store, "dep")
    tool = _tree_path(store, dep)
    mentions = {m.file: m.excerpt for m in find_mentions(tool, dep)}
    assert set(mentions) == {"bin/run", "lib"}
    assert hash_part(dep) in mentions["bin/run"] and mentions["bin/run"].startswith("…xxx")
    assert mentions["lib"].endswith("-dep/lib")
    text = _text(store, "top", tool)
    assert [m.file for m in find_mentions(text, tool)] == [""]


def test_closure_size_sums_nar_sizes(store: LocalStore) -> None:
    dep = _text(store, "dep")
    tool = _tree_path(store, dep)
    sizes = {}
    for p in (dep, tool):
        info = store.query_path_info(p)
        assert info is not None
        sizes[p] = info.nar_size
    assert closure_size(store, tool) == sizes[dep] + sizes[tool] > 65530
    assert closure_size(store, [dep, tool]) == closure_size(store, tool)
    assert closure_size(store, dep) == sizes[dep]


def test_cli_why_depends(store: LocalStore, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    dep = _text(store, "dep")
    tool = _tree_path(store, dep)
    top = _text(store, "top", tool)
    (tmp_path / "result").symlink_to(top)
    assert run(["why-depends", str(tmp_path / "result"), dep]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == top
    assert out[1].startswith("  .: ") and hash_part(tool) in out[1]
    assert out[2] == f"└── {tool}"
    assert {line.split(":")[0].strip() for line in out[3:5]} == {"bin/run", "lib"}
    assert out[5] == f"    └── {dep}"
    assert run(["why-depends", dep, top]) == 1
    assert "does not depend on" in capsys.readouterr().err


def test_cli_closure_size(store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    dep = _text(store, "dep")
    user = _text(store, "user", dep)
    assert run(["store", "path-info", "--closure-size", "--json", user]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["closureSize"] == closure_size(store, user) > entry["narSize"]
    assert run(["store", "path-info", "--closure-size", user]) == 0
    assert f"  closure:    {closure_size(store, user)}\n" in capsys.readouterr().out
    assert run(["store", "path-info", "--closure-size", "/elsewhere"]) == 1
    assert "not in the store" in capsys.readouterr().err


def test_cli_path_info_json_lists_a_path_that_is_not_valid(
        store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    kept = _text(store, "kept")
    gone = _text(store, "gone")
    store.delete_path(gone)
    assert run(["store", "path-info", "--json", kept, gone]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[0]["path"] == kept and "valid" not in entries[0]
    assert entries[1] == {"path": gone, "valid": False}
    assert run(["store", "path-info", kept, gone]) == 1  # without --json it is an error
    assert f"path '{gone}' is not valid" in capsys.readouterr().err


def test_path_info_json_of_a_path_that_is_not_valid_is_nix_s(
        oracle: NixOracle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalStore(oracle.store_dir, str(tmp_path / "state")) as ours:
        gone = _text(ours, "gone")
        ours.delete_path(gone)
    argv = ["store", "path-info", "--json", gone,
            "--store-dir", oracle.store_dir, "--state-dir", str(tmp_path / "state")]
    assert run(argv) == 0
    nix = json.loads(oracle.run("nix", "path-info", "--json", gone))  # exits 0 too
    assert json.loads(capsys.readouterr().out) == nix == [{"path": gone, "valid": False}]
