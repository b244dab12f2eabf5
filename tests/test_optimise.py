"""Hard-linking identical store files: bytes saved, contents unchanged, links collected."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store import nar
from runner.store.gc import collect_garbage
from runner.store.local_store import LocalStore
from runner.store.optimise import links_dir, optimise_path, optimise_store

SHARED = b"shared contents\n" * 4096  # 64 KiB


@pytest.fixture
def store(store_dir: str, state_dir: str) -> Iterator[LocalStore]:
    with LocalStore(store_dir, state_dir) as s:
        yield s


def _tree(root: Path, unique: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data").write_bytes(SHARED)
    (root / "tool").write_bytes(SHARED)
    (root / "tool").chmod(0o755)  # same bytes, but executable: must stay separate
    (root / "own").write_text(unique)
    return root


def _add_two(store: LocalStore, tmp_path: Path) -> tuple[str, str]:
    a = store.add_path(str(_tree(tmp_path / "a", "a")))
    b = store.add_path(str(_tree(tmp_path / "b", "b")))
    # As if another process had added them: this process's temporary roots go.
    store.temp_roots.close()
    return a, b


def _inode(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def test_optimise_links_identical_files_and_keeps_nar_hashes(store: LocalStore,
                                                              tmp_path: Path) -> None:
    a, b = _add_two(store, tmp_path)
    before = {p: os.lstat(p + "/sub") for p in (a, b)}
    stats = optimise_store(store)
    # Per tree, `sub/data` and `tool` differ only in the executable bit; the
    # second tree's two copies are the ones that go.
    assert stats.files == 6
    assert stats.files_linked == 2
    assert stats.bytes_saved == 2 * len(SHARED)
    assert _inode(a + "/sub/data") == _inode(b + "/sub/data")
    assert _inode(a + "/tool") == _inode(b + "/tool")
    assert _inode(a + "/tool") != _inode(a + "/sub/data")
    assert _inode(a + "/own") != _inode(b + "/own")
    for path in (a, b):
        info = store.query_path_info(path)
        assert info is not None and nar.hash_path(path) == (info.nar_hash, info.nar_size)
        st = os.lstat(path + "/sub")
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(before[path].st_mode) == 0o555
        assert st.st_mtime == 1
    assert stat.S_IMODE(os.lstat(b + "/sub/data").st_mode) == 0o444


def test_optimise_again_saves_nothing(store: LocalStore, tmp_path: Path) -> None:
    _add_two(store, tmp_path)
    optimise_store(store)
    again = optimise_store(store)
    assert (again.files, again.files_linked, again.bytes_saved) == (6, 0, 0)


def test_optimise_path_for_auto_optimise(store: LocalStore, tmp_path: Path) -> None:
    a, b = _add_two(store, tmp_path)
    first = optimise_path(store, a)
    assert (first.files_linked, first.bytes_saved) == (0, 0)  # a seeds the links dir
    second = optimise_path(store, b)
    assert (second.files_linked, second.bytes_saved) == (2, 2 * len(SHARED))


def test_writable_files_are_not_shared(store: LocalStore, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, b = _add_two(store, tmp_path)
    os.chmod(b + "/own", 0o644)  # tampered with
    stats = optimise_store(store)
    assert stats.files == 5
    assert "suspicious writable file" in capsys.readouterr().err


def test_gc_drops_links_no_path_uses(store: LocalStore, tmp_path: Path) -> None:
    _add_two(store, tmp_path)
    optimise_store(store)
    links = os.listdir(links_dir(store.store_dir))
    assert len(links) == 4  # data, tool, and each `own`
    result = collect_garbage(store)
    assert result.deleted  # deletes both: nothing is rooted
    assert os.listdir(links_dir(store.store_dir)) == []
    assert result.links_removed == 4  # counted, as everything gc removes


def test_gc_frees_shared_bytes_only_with_the_last_user(store: LocalStore,
                                                       tmp_path: Path) -> None:
    a, b = _add_two(store, tmp_path)
    optimise_store(store)
    store.delete_path(b)
    assert Path(a, "sub", "data").read_bytes() == SHARED
    result = collect_garbage(store)
    assert result.deleted == [a]
    assert result.bytes_freed >= 2 * len(SHARED)


def test_cli_optimise_reports_savings(store: LocalStore, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _add_two(store, tmp_path)
    assert run(["store", "optimise"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"2 of 6 files linked, 0.12 MiB ({2 * len(SHARED)} bytes) saved")


def test_auto_optimise_links_files_as_paths_are_added(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def add(name: str, *option: str) -> str:
        assert run(["store", "add", str(_tree(tmp_path / name, name)), *option]) == 0
        return capsys.readouterr().out.strip()

    plain = [add("a"), add("b")]
    assert _inode(plain[0] + "/sub/data") != _inode(plain[1] + "/sub/data")
    auto = [add(name, "--option", "auto-optimise", "true") for name in ("c", "d")]
    assert _inode(auto[0] + "/sub/data") == _inode(auto[1] + "/sub/data")
    assert _inode(auto[0] + "/tool") == _inode(auto[1] + "/tool")
    assert _inode(auto[0] + "/tool") != _inode(auto[0] + "/sub/data")  # executable bit differs


def _corrupt_in_place(path: str, data: bytes) -> None:
    """Write into the inode itself, as a tool editing a store file would (every hard
    link to it, its `.links` entry too, sees the change)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.chmod(path, 0o444)


@pytest.mark.parametrize("evil", [b"X" * len(SHARED), b"short"], ids=["same-size", "other-size"])
def test_optimise_never_links_to_a_corrupted_entry(store: LocalStore, tmp_path: Path,
                                                  evil: bytes,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a = store.add_path(str(_tree(tmp_path / "a", "a")))
    optimise_store(store)
    entry = os.path.join(links_dir(store.store_dir), nar.hash_path(a + "/sub/data")[0].base32())
    assert _inode(entry) == _inode(a + "/sub/data")
    _corrupt_in_place(a + "/sub/data", evil)  # the entry is corrupt now too
    b = store.add_path(str(_tree(tmp_path / "b", "b")))  # a good copy of the same file
    store.temp_roots.close()
    optimise_store(store)
    assert Path(b, "sub", "data").read_bytes() == SHARED
    assert f"removing corrupted link '{entry}'" in capsys.readouterr().err
    assert _inode(entry) == _inode(b + "/sub/data")  # the good copy took its place
    info = store.query_path_info(b)
    assert info is not None and nar.hash_path(b)[0] == info.nar_hash
