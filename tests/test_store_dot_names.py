"""Store paths whose names look like runner's own store-dir entries (`.gitignore`,
`foo.lock`, `x.check`): the same paths as Nix gives them, and gc, verify and optimise
never take them for runner's lock files, temp dirs or links."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.store.gc import collect_garbage
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks
from runner.store.optimise import optimise_store
from runner.store.roots import add_perm_root
from runner.store.verify import verify_store
from tests.daemon_harness import nix_env, nix_local_store, run_nix
from tests.nix_oracle import needs_nix

NAMES = [".gitignore", "...", ".a", "foo.lock", "x.check", ".links", ".tmp-1-x"]


def _files(root: Path) -> list[Path]:
    root.mkdir()
    out = []
    for name in NAMES:
        (root / name).write_text(f"same content\n{name}\n" if "." in name[1:] else "same\n")
        out.append(root / name)
    return out


@needs_nix
def test_dot_names_are_the_paths_nix_gives(tmp_path: Path, store_dir: str,
                                           state_dir: str) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store = nix_local_store(tmp_path, store_dir)
    with LocalStore(store_dir, state_dir) as store:
        for f in _files(tmp_path / "f"):
            ours = store.add_path(str(f))
            theirs = run_nix(env, "nix-store", "--store", nix_store, "--add", str(f)).stdout
            assert ours == theirs.strip()
            assert ours.endswith("-" + f.name)


def test_gc_verify_optimise_keep_dot_named_paths(tmp_path: Path, store_dir: str,
                                                  state_dir: str) -> None:
    with LocalStore(store_dir, state_dir) as store:
        added = [store.add_path(str(f)) for f in _files(tmp_path / "f")]
        for i, path in enumerate(added):
            add_perm_root(store_dir, state_dir, path, str(tmp_path / f"root{i}"))
        # Two of them a lock and a `.check` copy would shadow: `<hash>-foo` is not a path.
        lock_like = next(p for p in added if p.endswith("-foo.lock"))
        result = collect_garbage(store)
        assert result.deleted == [] and result.leftovers == []
        assert result.locks_removed == 0
        assert all(store.is_valid(p) and Path(p).exists() for p in added)
        assert Path(lock_like).read_text() == "same content\nfoo.lock\n"
        stats = optimise_store(store)
        assert stats is not None
        report = verify_store(store, check_contents=True)
        assert report.ok, report.to_json()
        assert all(store.is_valid(p) and Path(p).exists() for p in added)


def test_gc_still_removes_a_stale_lock_of_a_dot_named_path(tmp_path: Path, store_dir: str,
                                                           state_dir: str) -> None:
    # Control: the classification still finds runner's own entries.
    with LocalStore(store_dir, state_dir) as store:
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / ".gitignore").write_text("x\n")
        path = store.add_path(str(tmp_path / "f" / ".gitignore"))
        add_perm_root(store_dir, state_dir, path, str(tmp_path / "root"))
        locks = PathLocks()
        assert locks.try_lock([path])
        locks.unlock()
        Path(path + ".lock").write_text("")  # a stale lock file, as a crash leaves it
        result = collect_garbage(store)
        assert result.locks_removed == 1
        assert not Path(path + ".lock").exists()
        assert store.is_valid(path)


@pytest.mark.parametrize("name", [".", "..", ".-1", "..-a"])
def test_refused_names(name: str, tmp_path: Path, store_dir: str, state_dir: str) -> None:
    from runner.errors import RunnerError

    with LocalStore(store_dir, state_dir) as store:
        with pytest.raises(RunnerError) as info:
            store.add_text(name, "x")
        assert info.value.reason == "bad-name"
